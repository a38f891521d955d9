"""The dashboard in a real browser during a real run (issue 17).

Headless Chromium, driven by Selenium through Debian's chromedriver, opens
the one-time token link of a coordinator serving `--http-listen`, while
three real DiLoCo clients train a small regression model over gRPC. The
page must follow the run live over server-sent events: the loss curve
gains a point per applied round (read from the DOM while rounds close) and
the client table lists every client. The screenshot is the one the README
shows: set FEDGRPC_DASHBOARD_SCREENSHOT=docs/dashboard.png to refresh it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from torch import nn

from fedgrpc.client import DiLoCoClient
from fedgrpc.config import CoordinatorConfig
from fedgrpc.coordinator.services.in_thread import CoordinatorThread, serve_in_thread
from fedgrpc.crypto.admin_token import new_admin_token
from tests.helpers import eventually
from tests.helpers.raw import PB
from tests.helpers.scripted import FAST
from tests.helpers.three_clients import N, make_keys, running_trio, trio_config

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="chromium or chromedriver is not installed: this test drives a "
        "real headless browser (`make install` adds Debian's chromium and "
        "chromium-driver)",
    ),
]
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--window-size=1400,1300",
)  # fmt: skip
ROUNDS = 8
CLIENTS = 3
APPLIED = PB.ROUND_OUTCOME_APPLIED
COUNT_JS = """return {
  points: Array.from(document.querySelectorAll('#loss-curve circle.point.applied'))
    .map(p => Number(p.dataset.round)),
  applySteps: document.querySelectorAll('#time-chart rect.apply').length,
  checkpoints: document.querySelectorAll('#time-chart rect.checkpoint').length,
  clients: Array.from(document.querySelectorAll('#clients tbody tr'))
    .map(r => r.dataset.client),
  evals: Array.from(document.querySelectorAll('#loss-curve circle.point.eval'))
    .map(p => Number(p.dataset.round)),
  bytesUp: Array.from(document.querySelectorAll('#clients tbody tr'))
    .map(r => r.cells[r.cells.length - 2].textContent),
  live: document.getElementById('live').textContent,
};"""


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium'}")
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()


@dataclass
class Trainer:
    """A real client: SGD on y = w.x + noise, a short sleep per step."""

    seed: int
    leave: threading.Event
    rounds: int = ROUNDS
    synced: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def run(self, coordinator: CoordinatorThread) -> None:
        """`rounds` rounds, then stay connected until told to leave."""
        try:
            torch.manual_seed(self.seed)
            model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 1))
            w = torch.linspace(-1, 1, 16)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
            held_out = torch.randn(64, 16, generator=torch.Generator().manual_seed(7))

            def evaluate(m: nn.Module, version: int) -> dict[str, float]:
                loss = nn.functional.mse_loss(m(held_out).squeeze(1), held_out @ w)
                return {"loss": float(loss)}

            with DiLoCoClient(
                coordinator.address, model, config=FAST, evaluate=evaluate
            ) as client:
                rounds = 0
                while rounds < self.rounds:
                    x = torch.randn(32, 16)
                    loss = nn.functional.mse_loss(model(x).squeeze(1), x @ w)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    time.sleep(0.08)  # rounds slow enough to watch them land
                    rounds += client.step(loss.item(), num_samples=32)
                self.synced.set()
                self.leave.wait(60)
        except BaseException as exc:  # surfaced by the test thread
            self.error = exc


def test_the_dashboard_follows_a_real_run_live(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin.token"
    token_file.write_bytes(new_admin_token())
    token_file.chmod(0o600)
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, seed_from_first_client=True,
        min_clients=CLIENTS, inner_steps=5,
        codec="topk:0.1:int8", http_listen="127.0.0.1:0",
        admin_token_file=str(token_file), checkpoint_dir=str(tmp_path / "ckpt"),
    )  # fmt: skip
    with serve_in_thread(config) as coordinator:
        http = coordinator.running.http
        assert http is not None
        browser.get(f"{http.url}?token={token_file.read_text().strip()}")
        assert browser.current_url == http.url  # redirected: token out of the URL
        eventually(lambda: browser.execute_script(COUNT_JS)["live"] == "live")

        leave = threading.Event()
        trainers = [Trainer(seed, leave) for seed in range(CLIENTS)]
        threads = [
            threading.Thread(target=t.run, args=(coordinator,), daemon=True)
            for t in trainers
        ]
        for thread in threads:
            thread.start()
        seen: list[int] = []  # points on the curve, each time we looked
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline and not all(
                t.synced.is_set() or t.error for t in trainers
            ):
                seen.append(len(browser.execute_script(COUNT_JS)["points"]))
                time.sleep(0.1)
            for trainer in trainers:
                assert trainer.error is None, repr(trainer.error)
            _check_final_page(browser, coordinator, seen, tmp_path)
        finally:
            leave.set()
            for thread in threads:
                thread.join(timeout=30)
        for trainer in trainers:
            assert trainer.error is None, repr(trainer.error)


def _check_final_page(
    browser: webdriver.Chrome,
    coordinator: CoordinatorThread,
    seen: list[int],
    tmp_path: Path,
) -> None:
    """Every applied round on the curve, every client in the table; screenshot."""
    status = coordinator.status()
    applied = [r.round_id for r in status.recent_rounds if r.outcome == APPLIED]
    assert len(applied) == ROUNDS

    def final_page() -> dict[str, Any]:
        page: dict[str, Any] = browser.execute_script(COUNT_JS)
        assert page["points"] == applied
        return page

    page = eventually(final_page, timeout_s=10)
    assert sorted(page["clients"]) == sorted(c.client_id for c in status.clients)
    assert len(page["clients"]) == CLIENTS
    # Validation: every client evaluates each version it loads and reports
    # it with its next update, so each applied round carries three reports.
    assert all(r.eval_reports == CLIENTS for r in status.recent_rounds
               if r.outcome == APPLIED)  # fmt: skip
    assert page["evals"] == applied
    # Each client's traffic, up (its updates) and down (its pulls).
    assert all(c.bytes_received > 0 and c.bytes_sent > 0 for c in status.clients)
    assert len(page["bytesUp"]) == CLIENTS
    assert "0 B" not in page["bytesUp"]
    # Each round's time shows its outer step and its checkpoint (measured).
    rounds = [r for r in status.recent_rounds if r.outcome == APPLIED]
    assert all(r.apply_s > 0 and r.checkpoint_s > 0 for r in rounds)
    assert all(r.bytes_sent > 0 for r in rounds[1:])  # clients pulled each version
    assert page["applySteps"] == ROUNDS
    assert page["checkpoints"] == ROUNDS
    # Live: the curve grew while the run went on, never shrank, and
    # never jumped past the rounds that had closed.
    assert seen == sorted(seen)
    assert len(set(seen)) >= 3, seen
    assert max(seen) <= ROUNDS
    http = coordinator.running.http
    assert http is not None
    with urllib.request.urlopen(http.url + "readyz", timeout=10) as response:
        assert response.read() == b"ready\n"  # seeded and serving
    tiles = browser.find_element("id", "version").text
    assert tiles == str(status.model_version)

    shot = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if target := os.environ.get("FEDGRPC_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(shot, target)


MARKS_JS = """return {
  points: Array.from(document.querySelectorAll('#loss-curve circle.point.applied'))
    .map(p => Number(p.dataset.round)),
  skipped: Array.from(document.querySelectorAll('#loss-curve g.mark.skipped'))
    .map(g => Number(g.dataset.round)),
  guard: Array.from(document.querySelectorAll('#loss-curve polygon.mark.guard'))
    .map(g => Number(g.dataset.round)),
};"""


def test_a_guard_trip_is_marked_on_the_curve_as_a_skipped_round(
    browser: webdriver.Chrome, tmp_path: Path
) -> None:
    # Real signed updates from three raw clients: rounds 1-3 honest, round 4
    # a thousand times larger (the divergence guard refuses it), round 5 honest.
    keys = make_keys(tmp_path)  # before the config, which checks the files
    config = trio_config(tmp_path, http_listen="127.0.0.1:0", admin_access="loopback")
    with running_trio(config, keys, np.ones(N, np.float32)) as trio:
        rng = np.random.default_rng(0)
        for round_id in range(1, 6):
            scale = 1000.0 if round_id == 4 else 1.0
            for name in "abm":
                values = scale * 0.1 * rng.standard_normal(N).astype(np.float32)
                trio.push(name, values, num_samples=10, train_loss=2.0 / round_id)
            next_round = round_id + 1
            eventually(lambda: trio.status().round_id == next_round)  # noqa: B023
        tripped = next(r for r in trio.status().recent_rounds if r.round_id == 4)
        assert "divergence guard" in tripped.reason
        http = trio.coordinator.running.http
        assert http is not None
        browser.get(http.url)  # explicit loopback: no token needed here

        def marked() -> dict[str, list[int]]:
            page: dict[str, list[int]] = browser.execute_script(MARKS_JS)
            assert page["points"] == [1, 2, 3, 5]
            return page

        page = eventually(marked, timeout_s=10)
        assert page["skipped"] == [4]
        assert page["guard"] == [4]


SECURE_JS = """return Array.from(document.querySelectorAll(
  '#loss-curve circle.point.secure')).map(p => Number(p.dataset.round));"""


def test_secure_aggregation_rounds_are_marked_on_the_curve(
    browser: webdriver.Chrome,
) -> None:
    config = CoordinatorConfig(
        listen="127.0.0.1:0", open_enrollment=True, seed_from_first_client=True,
        min_clients=CLIENTS, inner_steps=3, secure_aggregation=True,
        codec="dense:int8", http_listen="127.0.0.1:0", admin_access="loopback",
    )  # fmt: skip
    with serve_in_thread(config) as coordinator:
        leave = threading.Event()
        trainers = [Trainer(seed, leave, rounds=2) for seed in range(CLIENTS)]
        threads = [
            threading.Thread(target=t.run, args=(coordinator,), daemon=True)
            for t in trainers
        ]
        for thread in threads:
            thread.start()
        try:
            eventually(lambda: all(t.synced.is_set() or t.error for t in trainers),
                       timeout_s=120)  # fmt: skip
            for trainer in trainers:
                assert trainer.error is None, repr(trainer.error)
            status = coordinator.status()
            secure = [r.round_id for r in status.recent_rounds if r.secure]
            assert secure == [1, 2]
            http = coordinator.running.http
            assert http is not None
            browser.get(http.url)

            def drawn() -> list[int]:
                marked: list[int] = browser.execute_script(SECURE_JS)
                assert marked == secure
                return marked

            eventually(drawn, timeout_s=10)
        finally:
            leave.set()
            for thread in threads:
                thread.join(timeout=30)
