"""Several agent workers of one site: the coordinator spreads the site's requests over them (a large
batch is split across them, requests go round robin) and counts them as one site."""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import replace

from PIL import Image

from coordinator.config import load_coordinator_config
from coordinator.federation.service import Federation
from tests.site_helpers import (
    coordinator_toml,
    enrol_site,
    free_port,
    install_model,
    make_ca,
    score_request,
    serving_agent,
)


def test_two_workers_of_one_site_share_the_load_and_count_as_one_site(tmp_path, world_dir, caplog):
    ca_dir = make_ca(tmp_path / "ca")
    port = free_port()
    config = enrol_site(tmp_path, ca_dir, "site-a", port)
    install_model(config, world_dir)
    coordinator = load_coordinator_config(
        coordinator_toml(tmp_path, ca_dir, port, ["site-a"], extra="[pool]\nmax_batch = 4\nparallel = 2\n")
    )
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
            caplog.set_level(logging.INFO, logger="mor")
            logging.getLogger("mor").addHandler(caplog.handler)  # `mor` may not propagate (configure_logging)
            ids = [uuid.uuid4().hex for _ in range(4)]
            try:
                for request_id in ids:
                    result = fed.pool.fanout(replace(score_request(2), request_id=request_id))
                    assert list(result.replies) == ["site-a"] and result.failures == {}
            finally:
                logging.getLogger("mor").removeHandler(caplog.handler)
            assert served_by.count("w1") == served_by.count("w2") == 2
            # One request id per scoring request in the site's and the coordinator's logs; no content.
            logged = {(r.getMessage(), getattr(r, "request", None)) for r in caplog.records}
            assert all(("scored", i) in logged and ("fan-out done", i) in logged for i in ids)
            assert not any("colour" in json.dumps(vars(r), default=str) for r in caplog.records)
        finally:
            for worker in workers:
                worker.stop()
    summary = fed.ledger.summary()["site-a"]
    assert summary.reports == 2 and summary.scoring_sessions == 1 and summary.items_scored == 16
