"""The Data page with an uploaded broken file, in a real browser: every problem listed at once, and the explicit
"drop the invalid rows" choice leading to a loaded dataset. Screenshot: docs/screenshots/data-problems.png."""

from __future__ import annotations

import sys
from pathlib import Path

from browser_helpers import REPO_ROOT, screenshot, wait_for_app

sys.path.insert(0, str(REPO_ROOT))
from tests.test_data_problems import broken_file  # noqa: E402


def test_an_uploaded_bad_file_lists_its_problems_and_can_drop_them(page, tmp_path: Path):
    path = broken_file(tmp_path / "hub-prefs.jsonl")
    page.goto("/data")
    wait_for_app(page, timeout=180_000)
    page.get_by_text("Upload a file", exact=True).click()
    wait_for_app(page)
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(path))
    error = page.get_by_test_id("stAlert").filter(has_text="This data cannot be used")
    error.wait_for()
    text = error.inner_text()
    assert "3 rows cannot be used (2 wrong type, 1 malformed json); 3 rows are fine" in text
    for where in ("(row 1, column chosen)", "(row 2, column rejected)", "(row 4)"):
        assert where in text
    drop = page.get_by_text("Drop the 3 invalid rows and continue")
    drop.wait_for()
    screenshot(page, "data-problems")

    drop.click()
    page.get_by_text("3 pairs loaded; 3 rows that cannot be used were left out").wait_for()
    wait_for_app(page)
    page.get_by_text("Current dataset: hub-prefs.jsonl").wait_for()
    assert page.get_by_text("This data cannot be used").count() == 0
