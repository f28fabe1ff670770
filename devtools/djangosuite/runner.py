"""The test runner for Django's own suite on this project's engines (settings.TEST_RUNNER).

Tests listed in expected.py for the engine under test run as expected failures: the run passes
when they fail with the listed error, and fails when they pass (remove them from the list) or
fail with another error (a new difference). Any other failure fails the run, as usual.
"""

from __future__ import annotations

import unittest

from django.conf import settings
from django.test.runner import DiscoverRunner
from django.test.utils import iter_test_cases

from devtools.djangosuite.expected import Difference, expected_for


def _test_id(test: unittest.TestCase) -> str:
    # A failing subTest reports itself; the list names the test method.
    return getattr(test, "test_case", test).id()


class SuiteResult(unittest.TextTestResult):
    """Counts an expected failure only when it fails with the listed error."""

    expected: dict[str, Difference] = {}

    def addExpectedFailure(self, test, err):  # noqa: N802  (unittest's name)
        difference = self.expected.get(_test_id(test))
        if difference is None:  # marked @expectedFailure in Django's own suite
            super().addExpectedFailure(test, err)
            return
        message = "".join(self._exc_info_to_string(err, test))
        if difference.matches(message):
            super().addExpectedFailure(test, err)
            return
        self.stream.writeln(
            f"\n{_test_id(test)} is listed as an expected difference ({difference.error!r}) "
            "but failed with another error:"
        )
        if issubclass(err[0], AssertionError):
            self.addFailure(test, err)
        else:
            self.addError(test, err)

    def addError(self, test, err):  # noqa: N802
        # An error in tearDown (cleaning up what the listed failure left undone) hides the test's
        # own expected failure from unittest; it counts as that failure when it matches too.
        difference = self.expected.get(_test_id(test))
        if difference is not None and difference.matches(self._exc_info_to_string(err, test)):
            if not any(failed is test for failed, _ in self.expectedFailures):
                super().addExpectedFailure(test, err)
            return
        super().addError(test, err)

    def addUnexpectedSuccess(self, test):  # noqa: N802
        difference = self.expected.get(_test_id(test))
        if difference is None:
            super().addUnexpectedSuccess(test)
            return
        if not difference.strict:  # fails only where the server or Django version lacks something
            self.addSuccess(test)
            return
        self.stream.writeln(
            f"\n{_test_id(test)} passed but is listed in devtools/djangosuite/expected.py: "
            "remove it from the list."
        )
        super().addUnexpectedSuccess(test)


class SuiteRunner(DiscoverRunner):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.engine = settings.DATABASES["default"]["ENGINE"]
        self.expected = expected_for(self.engine)

    def build_suite(self, *args, **kwargs):
        suite = super().build_suite(*args, **kwargs)
        for test in iter_test_cases(suite):
            if test.id() in self.expected:
                # What @unittest.expectedFailure sets; unittest reads it from the instance too.
                test.__unittest_expecting_failure__ = True
        return suite

    def get_resultclass(self):
        resultclass = super().get_resultclass()
        if resultclass is not None:  # --debug-sql or --pdb: their own result classes
            return resultclass
        return type("SuiteResult", (SuiteResult,), {"expected": self.expected})

    def run_suite(self, suite, **kwargs):
        result = super().run_suite(suite, **kwargs)
        self._summarise(result)  # before the test databases are dropped, which can fail too
        return result

    def _summarise(self, result) -> None:
        print(f"\nEngine {self.engine}: {result.testsRun} tests run.")
        differences = [test for test, _ in result.expectedFailures if _test_id(test) in self.expected]
        if differences:
            print(f"{len(differences)} expected differences (devtools/djangosuite/expected.py):")
            for test in differences:
                print(f"  {_test_id(test)}: {self.expected[_test_id(test)].reason}")
        unexpected = [*result.failures, *result.errors]
        if unexpected or result.unexpectedSuccesses:
            print(
                f"NOT EXPECTED: {len(unexpected)} failures/errors, "
                f"{len(result.unexpectedSuccesses)} listed tests that passed:"
            )
            for test_id in dict.fromkeys(_test_id(test) for test, _ in unexpected):
                print(f"  FAILED {test_id}")
            for test in result.unexpectedSuccesses:
                print(f"  PASSED {_test_id(test)} (remove it from expected.py)")
