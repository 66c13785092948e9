"""Several agent workers of one site: the coordinator spreads the site's requests over them (a large
batch is split across them, requests go round robin) and counts them as one site."""

from __future__ import annotations

import time

from PIL import Image

from coordinator.config import load_coordinator_config
from coordinator.service import Federation
from tests.site_helpers import (coordinator_toml, enrol_site, free_port, install_model, make_ca, score_request,
                                serving_agent)


def test_two_workers_of_one_site_share_the_load_and_count_as_one_site(tmp_path, world_dir):
    ca_dir = make_ca(tmp_path / "ca")
    port = free_port()
    config = enrol_site(tmp_path, ca_dir, "site-a", port)
    install_model(config, world_dir)
    coordinator = load_coordinator_config(coordinator_toml(tmp_path, ca_dir, port, ["site-a"],
                                                           extra="[pool]\nmax_batch = 4\nparallel = 2\n"))
    served_by: list[str] = []
    with Federation(coordinator) as fed:
        workers = [serving_agent(config, worker, served_by) for worker in ("w1", "w2")]
        try:
            deadline = time.monotonic() + 20
            while len(fed.pool.peers()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sorted(p.worker_id for p in fed.pool.peers()) == ["w1", "w2"]
            assert fed.live_sites() == ["site-a"] and list(fed.reports()) == ["site-a"]

            image = Image.new("RGB", (16, 16), (30, 200, 30))
            scores = fed.scorer([image] * 16, ["What colour is the shape?"] * 16, ["green"] * 16)
            assert list(scores) == ["site-a"] and len(scores["site-a"]) == 16
            assert all(isinstance(s, float) for s in scores["site-a"])
            assert sorted(set(served_by)) == ["w1", "w2"] and len(served_by) == 4  # 4 chunks over both

            served_by.clear()
            for _ in range(4):
                result = fed.pool.fanout(score_request(2))
                assert list(result.replies) == ["site-a"] and result.failures == {}
            assert served_by.count("w1") == served_by.count("w2") == 2
        finally:
            for worker in workers:
                worker.stop()
    summary = fed.ledger.summary()["site-a"]
    assert summary.reports == 2 and summary.scoring_sessions == 1 and summary.items_scored == 16
