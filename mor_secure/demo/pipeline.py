"""The whole federation on one machine, stage by stage, every side a separate `mor` process over mutual TLS.

world -> tiny models -> CA + coordinator certificate -> each site's key and CSR (`mor client init`),
signed by the CA -> public pretraining (SFT of the tiny VLMs on public data: the policy's warm start and the
stand-ins for the public pretrained VLMs a real site starts from) -> DP reward models (a family and a target
epsilon per site; VLMs on the pretrained backbones) -> agents dial in -> probe -> router -> policy eval ->
GRPO with the MoR reward -> policy eval -> ledger verify -> report. The core drives the sides only through the
CLI, which is also how they are deployed.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mor_secure.demo.stages import DemoError, Stage, StageContext, StageRunner, child_env, mor_command, stop_group

SITES = ("client-0", "client-1", "client-2")
FAMILIES = ("dual-encoder", "qwen2-vl", "dual-encoder")
"""Each site's reward-model family: the one measured to read the site's domain (detail, medical, chart); the tiny
LLaVA stayed near chance on 64-pixel charts, which a dual-encoder reads (README, "What `mor demo` does")."""
SITE_VLM_FAMILIES = tuple(f for f in dict.fromkeys(FAMILIES) if f != "dual-encoder")
"""The sites' VLM families: each gets a public reward model on its public VLM."""
VLM_FAMILIES = tuple(dict.fromkeys(("qwen2-vl", *SITE_VLM_FAMILIES)))
"""The tiny VLMs the demo builds and pretrains on public data: the policy's (qwen2-vl) and each VLM site's."""
EPSILONS = (2.0, 4.0, 8.0)
COORDINATOR = "coord"


@dataclass(frozen=True)
class Profile:
    """Sizes of one demo run (quick or full); every field is part of the stage markers it affects."""

    pairs: int
    router_pairs: int
    eval_questions: int
    site_pairs: int
    site_epochs: int
    site_batch: int
    public_rows: int
    sft_steps: int
    public_reward_epochs: int
    vlm_reward_epochs: int
    router_epochs: int
    grpo_steps: int
    grpo_batch: int
    eval_limit: int
    baseline_rounds: int
    baseline_epochs: int
    baseline_pairs: int


QUICK = Profile(
    pairs=80,
    router_pairs=60,
    eval_questions=30,
    site_pairs=48,
    site_epochs=1,
    site_batch=16,
    public_rows=256,
    sft_steps=40,
    public_reward_epochs=1,
    vlm_reward_epochs=1,
    router_epochs=40,
    grpo_steps=4,
    grpo_batch=16,
    eval_limit=30,
    baseline_rounds=3,
    baseline_epochs=1,
    baseline_pairs=48,
)
FULL = Profile(
    pairs=1500,
    router_pairs=300,
    eval_questions=300,
    site_pairs=0,
    site_epochs=16,
    site_batch=256,
    public_rows=2000,
    sft_steps=800,
    public_reward_epochs=16,
    vlm_reward_epochs=4,
    router_epochs=100,
    grpo_steps=300,
    grpo_batch=64,
    eval_limit=300,
    baseline_rounds=20,
    baseline_epochs=10,
    baseline_pairs=480,
)
"""The full demo trains each site on all its pairs at the product's defaults (`mor client train`)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_toml(path: Path, data: dict[str, Any]) -> None:
    """Write a two-level TOML file (top-level keys, then one table per dict value)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def merge_toml(path: Path, updates: dict[str, dict[str, Any]]) -> None:
    """Set keys in the tables of an existing TOML file (the file `mor client init` wrote)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    for section, values in updates.items():
        data.setdefault(section, {}).update(values)
    write_toml(path, data)


class Demo:
    """Paths, profile and stages of one demo in ``workdir``; ``run()`` builds everything and the report."""

    def __init__(
        self, workdir: Path, profile: Profile, console: Any, *, name: str = "full", fresh: bool = False
    ) -> None:
        self.w, self.profile, self.console, self.fresh = workdir.resolve(), profile, console, fresh
        self.profile_name, self.timings = name, dict[str, float]()
        self.world, self.models, self.ca = self.w / "world", self.w / "models", self.w / "ca"
        self.coord_toml = self.w / "coordinator" / "coordinator.toml"
        self.ledger = self.w / "coordinator" / "ledger.jsonl"
        self.public, self.warm = self.w / "policy" / "public", self.w / "policy" / "warm"
        self.prompts = self.w / "policy" / "prompts"
        self.grpo_out, self.router_out, self.results = self.w / "grpo", self.w / "router", self.w / "results"
        self.port = free_port()
        self.agents: list[subprocess.Popen] = []

    def site_dir(self, site: str) -> Path:
        return self.w / "sites" / site

    # ----- stages -----

    def stages(self) -> list[Stage]:
        p = self.profile
        return [
            Stage(
                "world",
                "generate the benchmark world (3 clients, 3 domains)",
                self._world,
                {"pairs": p.pairs, "router": p.router_pairs, "eval": p.eval_questions},
                [self.world],
            ),
            Stage(
                "models",
                f"build the tiny VLMs ({', '.join(VLM_FAMILIES)})",
                self._models,
                {"families": VLM_FAMILIES},
                [self.models],
            ),
            # a new CA starts a new ledger: the old one's reports are signed under the old CA
            Stage(
                "pki", "create the CA and the coordinator certificate", self._pki, {}, [self.ca, self.coord_toml.parent]
            ),
            Stage(
                "sites",
                "enrol the sites: key + CSR at each site, signed by the CA",
                self._sites,
                {"sites": SITES},
                [self.w / "sites"],
            ),
            Stage(
                "warmstart",
                "pretrain on public data: the policy's warm start and every site's starting model",
                self._warmstart,
                {
                    "rows": p.public_rows,
                    "steps": p.sft_steps,
                    "reward_epochs": p.public_reward_epochs,
                    "vlm_reward_epochs": p.vlm_reward_epochs,
                    "site_vlms": SITE_VLM_FAMILIES,
                },
                [self.w / "policy"],
            ),
            Stage(
                "train",
                "train each site's reward model with DP (eps 2 / 4 / 8)",
                self._train,
                {
                    "pairs": p.site_pairs,
                    "epochs": p.site_epochs,
                    "batch": p.site_batch,
                    "eps": EPSILONS,
                    "families": FAMILIES,
                    "bases": "public reward models",
                },
            ),
            Stage(
                "site_eval",
                "each site measures its model on its own held-out pairs (pairwise, top-1)",
                self._site_eval,
                {},
                [self.results / "sites"],
            ),
            Stage(
                "agents",
                "start the three agents (they dial the coordinator over mTLS)",
                self._start_agents,
                always=True,
            ),
            Stage("probe", "probe the federation", self._probe, always=True),
            Stage(
                "router",
                "train the router on the sites' scores (MoR) and the FedAvg/centralised baselines",
                self._router,
                {"epochs": p.router_epochs, "baselines": [p.baseline_rounds, p.baseline_epochs, p.baseline_pairs]},
                [self.router_out],
            ),
            Stage(
                "eval_before",
                "evaluate the warm-start policy on held-out questions",
                self._eval_before,
                {"limit": p.eval_limit},
                [self.results / "eval_before.json"],
            ),
            Stage(
                "grpo",
                "GRPO with the MoR reward and a KL penalty",
                self._grpo,
                {"steps": p.grpo_steps, "batch": p.grpo_batch},
                [self.grpo_out],
            ),
            Stage(
                "eval_after",
                "evaluate the GRPO policy on held-out questions",
                self._eval_after,
                {"limit": p.eval_limit},
                [self.results / "eval_after.json"],
            ),
            Stage("ledger", "verify the privacy ledger and read each site's epsilon", self._ledger, always=True),
            Stage("report", "write the report (markdown + plot)", self._report, always=True),
        ]

    def _world(self, ctx: StageContext) -> None:
        p = self.profile
        ctx.run(
            "data",
            "synth",
            "--out",
            self.world,
            "--clients",
            len(SITES),
            "--pairs",
            p.pairs,
            "--router-pairs",
            p.router_pairs,
            "--eval",
            p.eval_questions,
            "--force",
        )

    def _models(self, ctx: StageContext) -> None:
        ctx.run(*self._tiny(VLM_FAMILIES[0]), parallel=[self._tiny(f) for f in VLM_FAMILIES[1:]])

    def _tiny(self, family: str) -> list[object]:
        return ["models", "tiny", "--family", family, "--out", self.models / family, "--force"]

    def _pki(self, ctx: StageContext) -> None:
        ctx.run("certs", "init", "--ca-dir", self.ca)
        ctx.run("certs", "issue", "--ca-dir", self.ca, "--role", "coordinator", "--name", COORDINATOR)

    def _sites(self, ctx: StageContext) -> None:
        for site in SITES:
            folder = self.site_dir(site)
            ctx.run(
                "client",
                "init",
                "--site",
                site,
                "--coordinator",
                f"tcp://127.0.0.1:{self.port}",
                "--coordinator-name",
                COORDINATOR,
                "--out",
                folder,
                "--data",
                self.world / site,
            )
            ctx.run("certs", "sign", "--ca-dir", self.ca, "--csr", folder / "certs" / f"{site}.csr")
            for name in ("ca.pem", "crl.pem"):  # what the CA operator sends back with the certificate
                (folder / "certs" / name).write_bytes((self.ca / name).read_bytes())

    def _train(self, ctx: StageContext) -> None:
        p = self.profile
        commands = []
        for site, family, eps in zip(SITES, FAMILIES, EPSILONS):
            config = self.site_dir(site) / "client.toml"
            merge_toml(
                config,
                {
                    "model": {"family": family, "base": str(self.site_base(family))},
                    "data": {"max_pairs": p.site_pairs},
                    "train": {"epochs": p.site_epochs, "batch_size": p.site_batch, "checkpoint_every": 1000},
                    "privacy": {"target_epsilon": eps, "max_epsilon": 1000.0},
                },
            )
            commands.append(["client", "train", "--config", config, "--quiet", "--no-resume"])
        ctx.run(*commands[0], parallel=commands[1:])  # at the same time, one intra-op thread each

    def _site_eval(self, ctx: StageContext) -> None:
        (self.results / "sites").mkdir(parents=True, exist_ok=True)
        for site in SITES:
            ctx.run(
                "client",
                "eval",
                "--config",
                self.site_dir(site) / "client.toml",
                "--json",
                stdout=self.results / "sites" / f"{site}.json",
            )

    def _warmstart(self, ctx: StageContext) -> None:
        p = self.profile
        ctx.run("coordinator", "public-data", "--out", self.public, "--n", p.public_rows, "--exclude-world", self.world)
        # GRPO's prompts are new questions: on the SFT rows the warm start recites its memorised (flawed) label and
        # samples nothing else, which leaves a group no advantage to learn from
        ctx.run(
            "coordinator",
            "public-data",
            "--out",
            self.prompts,
            "--n",
            p.public_rows,
            "--seed",
            1,
            "--exclude-world",
            self.world,
        )
        commands = [
            [
                "coordinator",
                "sft",
                "--base",
                self.models / f,
                "--data",
                self.public,
                "--out",
                self.pretrained(f),
                "--steps",
                p.sft_steps,
                "--batch-size",
                32,
                "--lr",
                3e-3,
            ]
            for f in VLM_FAMILIES
        ]
        commands.append(
            [
                "coordinator",
                "public-reward",
                "--data",
                self.public,
                "--out",
                self.site_base("dual-encoder"),
                "--epochs",
                p.public_reward_epochs,
            ]
        )
        ctx.run(*commands[0], parallel=commands[1:])
        # a VLM site's reward model starts from its public VLM (after the SFT above), ranking public answers
        vlm_rewards = [
            [
                "coordinator",
                "public-reward",
                "--family",
                f,
                "--base",
                self.pretrained(f),
                "--data",
                self.public,
                "--out",
                self.site_base(f),
                "--epochs",
                p.vlm_reward_epochs,
            ]
            for f in SITE_VLM_FAMILIES
        ]
        if vlm_rewards:
            ctx.run(*vlm_rewards[0], parallel=vlm_rewards[1:])

    def pretrained(self, family: str) -> Path:
        """A tiny VLM after SFT on public data, standing in for the public pretrained VLM a site starts from
        (the qwen2-vl one is also the policy's warm start)."""
        return self.warm if family == "qwen2-vl" else self.w / "policy" / f"pretrained-{family}"

    def site_base(self, family: str) -> Path:
        """The reward model a ``family`` site starts from: pretrained on public pairs (a VLM on its
        public VLM, :meth:`pretrained`; the dual-encoder from scratch)."""
        return self.w / "policy" / f"public-reward-{family}"

    def _write_coordinator_config(self) -> None:
        p = self.profile
        self.coord_toml.parent.mkdir(parents=True, exist_ok=True)
        write_toml(
            self.coord_toml,
            {
                "name": COORDINATOR,
                "bind": f"tcp://127.0.0.1:{self.port}",
                "tls": {
                    "ca": str(self.ca / "ca.pem"),
                    "cert": str(self.ca / f"{COORDINATOR}.pem"),
                    "key": str(self.ca / f"{COORDINATOR}.key"),
                    "crl": str(self.ca / "crl.pem"),
                },
                "clients": {
                    "allow": list(SITES),
                    "quorum": 2,
                    "deadline_s": 60.0,
                    "heartbeat_s": 1.0,
                    "peer_timeout_s": 120.0,
                },
                "pool": {"max_batch": 64, "cooldown_s": 10.0},
                "ledger": {"path": str(self.ledger)},
                "router": {
                    "policy": str(self.warm),
                    "data": str(self.world / "server" / "router"),
                    "out": str(self.router_out),
                    "epochs": p.router_epochs,
                    "wait_s": 120.0,
                },
                # the parameter-sharing baselines the paper replaces, simulated in process on the sites' data at
                # the middle epsilon (the coordinator never holds that data in a real deployment)
                "baselines": {
                    "data": [str(self.world / s) for s in SITES],
                    "max_pairs": p.baseline_pairs,
                    "rounds": p.baseline_rounds,
                    "epochs": p.baseline_epochs,
                    "dp": True,
                    "target_epsilon": EPSILONS[1],
                },
                "grpo": {
                    "policy": str(self.warm),
                    "data": str(self.prompts),
                    "reward": "mor",
                    "mixture": str(self.router_out / "mixture"),
                    "out": str(self.grpo_out),
                    "steps": p.grpo_steps,
                    "beta": 0.3,
                    "spread_penalty": 1.0,
                    "image_contrast": True,
                    "scale_rewards": "batch",
                    "num_generations": 8,
                    "batch_size": p.grpo_batch,
                    "lr": 3e-4,
                    "lr_scheduler": "constant",
                    "max_completion_length": 8,
                    "temperature": 1.0,
                    "logging_steps": 1,
                    "save_steps": p.grpo_steps,
                    "quorum": 2,
                    "wait_s": 120.0,
                    "report_to": "tensorboard",
                },
            },
        )

    def _start_agents(self, ctx: StageContext) -> None:
        self._write_coordinator_config()
        for site in SITES:
            config = self.site_dir(site) / "client.toml"
            # each stage's coordinator is a new process: a short idle timeout lets the agents redial the next one fast
            merge_toml(
                config,
                {
                    "coordinator": {
                        "endpoint": f"tcp://127.0.0.1:{self.port}",
                        "heartbeat_s": 1.0,
                        "idle_timeout_s": 5.0,
                        "backoff_max_s": 1.0,
                    }
                },
            )
            log = open(self.w / "logs" / f"agent-{site}.log", "a", encoding="utf-8")
            try:
                self.agents.append(
                    subprocess.Popen(
                        mor_command("client", "serve", "--config", config, "--worker-id", f"{site}-demo"),
                        stdout=log,
                        stderr=log,
                        stdin=subprocess.DEVNULL,
                        env=child_env(),
                        start_new_session=True,
                    )
                )
            finally:
                log.close()
            with ctx.log.open("a", encoding="utf-8") as out:
                out.write(f"started agent {site} (pid {self.agents[-1].pid}), log: {log.name}\n")

    def stop_agents(self) -> None:
        """Stop every agent this demo started (their whole process groups)."""
        for proc in self.agents:
            stop_group(proc)
        self.agents.clear()

    def _check_agents(self, ctx: StageContext) -> None:
        dead = [site for site, proc in zip(SITES, self.agents) if proc.poll() is not None]
        if dead:
            raise DemoError(ctx.name, self.w / "logs" / f"agent-{dead[0]}.log", f"agent(s) {', '.join(dead)} exited")

    def _probe(self, ctx: StageContext) -> None:
        ctx.run("coordinator", "probe", "--config", self.coord_toml, "--wait", 120)
        self._check_agents(ctx)

    def _router(self, ctx: StageContext) -> None:
        ctx.run("coordinator", "router", "--config", self.coord_toml)

    def _eval(self, ctx: StageContext, policy: Path, name: str) -> None:
        self.results.mkdir(parents=True, exist_ok=True)
        ctx.run(
            "coordinator",
            "eval",
            "--policy",
            policy,
            "--data",
            self.world / "server" / "eval",
            "--limit",
            self.profile.eval_limit,
            "--json",
            stdout=self.results / name,
        )

    def _eval_before(self, ctx: StageContext) -> None:
        self._eval(ctx, self.warm, "eval_before.json")

    def _grpo(self, ctx: StageContext) -> None:
        self._check_agents(ctx)
        ctx.run("coordinator", "grpo", "--config", self.coord_toml)

    def _eval_after(self, ctx: StageContext) -> None:
        self._eval(ctx, self.grpo_out / "policy", "eval_after.json")

    def _ledger(self, ctx: StageContext) -> None:
        self.stop_agents()  # every session is recorded before the ledger is read
        self.results.mkdir(parents=True, exist_ok=True)
        ctx.run("ledger", "verify", self.ledger, "--ca", self.ca / "ca.pem", stdout=self.results / "ledger_verify.txt")
        ctx.run("ledger", "show", self.ledger, "--json", stdout=self.results / "ledger.json")

    def _report(self, ctx: StageContext) -> None:
        from mor_secure.demo.report import write_report

        path = write_report(self.w, self.profile_name, asdict(self.profile), self.timings)
        with ctx.log.open("a", encoding="utf-8") as out:
            out.write(f"report: {path}\n")

    # ----- the run -----

    def run(self) -> Path:
        """Every stage in order (agents always stopped at the end); returns the report's path."""
        runner = StageRunner(self.w, self.console, fresh=self.fresh)
        self.timings = runner.timings
        try:
            runner.run(self.stages())
        finally:
            self.stop_agents()
        return self.w / "report.md"
