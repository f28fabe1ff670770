// Refresh the live panel every few seconds and keep a short history of
// "checked out now" for the trend line. No framework: the server draws the charts.
(function () {
  "use strict";
  const panel = document.getElementById("pool-panel");
  const line = document.getElementById("trend-line");
  const history = [];
  const keep = 60; // points: two minutes at the default two-second refresh
  const refreshMs = 1000 * Number(panel.dataset.refresh || 2);

  function record() {
    const tiles = panel.querySelector(".tiles");
    if (!tiles) return;
    history.push({ out: Number(tiles.dataset.checkedOut), max: Number(tiles.dataset.max) });
    while (history.length > keep) history.shift();
    const top = Math.max(1, ...history.map((p) => Math.max(p.out, p.max)));
    const step = 560 / (keep - 1);
    line.setAttribute(
      "points",
      history.map((p, i) => `${(i * step).toFixed(1)},${(78 - (p.out / top) * 74).toFixed(1)}`).join(" ")
    );
  }

  async function refresh() {
    try {
      const response = await fetch(panel.dataset.url, { headers: { Accept: "text/html" } });
      if (response.ok) panel.innerHTML = await response.text();
    } catch (err) {
      // The server may be restarting; try again on the next tick.
    }
    record();
  }

  record();
  setInterval(refresh, refreshMs);
})();
