// Fetch the live panel again every few seconds. The server draws the charts and keeps
// the history behind the trend, so nothing is lost when the page is opened again.
(function () {
  "use strict";
  const panel = document.getElementById("pool-panel");
  const refreshMs = 1000 * Number(panel.dataset.refresh || 2);

  async function refresh() {
    try {
      const response = await fetch(panel.dataset.url, { headers: { Accept: "text/html" } });
      if (response.ok) panel.innerHTML = await response.text();
    } catch (err) {
      // The server may be restarting; try again on the next tick.
    }
  }

  setInterval(refresh, refreshMs);
})();
