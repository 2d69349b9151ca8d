"""Deliberately misbehaving unittest cases for test_stdlib_runner.py (not collected by pytest:
the runner's children load them by id). Each one is what a broken loop can do to a test."""

from __future__ import annotations

import os
import time
import unittest


class Cases(unittest.TestCase):
    def test_a_passes(self) -> None:
        self.assertEqual(1 + 1, 2)

    def test_b_hangs(self) -> None:
        time.sleep(3600)  # interrupted by the per-test alarm

    def test_c_hangs_hard(self) -> None:
        while True:  # swallows the alarm too: only ending the child stops it
            try:
                time.sleep(3600)
            except BaseException:  # the point of this case
                pass

    def test_d_crashes(self) -> None:
        os._exit(3)

    def test_e_fails(self) -> None:
        self.assertEqual(1, 2)

    def test_f_passes_after_all_that(self) -> None:
        self.assertTrue(True)


class BrokenSetUp(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        raise RuntimeError("set-up fails")

    def test_never_runs(self) -> None:
        pass
