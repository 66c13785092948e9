"""A site's own data in TRL's layouts, written here from generated images (not by the benchmark world):
`mor data check` reports it, `mor client train`/`eval` use it, hostile files give one-line errors."""

from __future__ import annotations

import json
import random
import struct
import zlib
from pathlib import Path

import datasets
import pytest
from click.testing import CliRunner
from PIL import Image

from client_agent.budget import SiteLedger

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
LONG = "Looking at the image carefully, the large square in the middle has a colour that is clearly visible. " * 4


def pairs(n: int, seed: int = 0) -> list[dict]:
    """Colour questions with a long answer whose conclusion (at its end) is right or wrong."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        colour, wrong = rng.sample(sorted(COLOURS), 2)
        image = Image.new("RGB", (32 + 8 * (i % 3), 32), (250, 250, 250))
        image.paste(COLOURS[colour], (6, 6, 26, 26))
        rows.append(
            {
                "image": image,
                "question": f"What colour is the square? ({seed}.{i})",
                "chosen": f"{LONG}So the answer is {colour}.",
                "rejected": f"{LONG}So the answer is {wrong}.",
            }
        )
    return rows


def png_bytes(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def conversational(row: dict) -> dict:
    """TRL's vision DPO layout: images (a list), message lists with content parts."""
    return {
        "images": [row["image"]],
        "prompt": [
            {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": row["question"]}]}
        ],
        "chosen": [{"role": "assistant", "content": [{"type": "text", "text": row["chosen"]}]}],
        "rejected": [{"role": "assistant", "content": [{"type": "text", "text": row["rejected"]}]}],
    }


def write_layout(layout: str, folder: Path, rows: list[dict]) -> tuple[Path, dict[str, str]]:
    """The data set of ``rows`` in ``layout``; returns its path and the column mapping it needs."""
    folder.mkdir(parents=True, exist_ok=True)
    if layout == "conversational-disk":  # one split: the site holds out a fraction itself
        features = datasets.Features(
            {
                "images": datasets.List(datasets.Image()),
                **{
                    c: datasets.List(
                        {
                            "role": datasets.Value("string"),
                            "content": datasets.List(
                                {"type": datasets.Value("string"), "text": datasets.Value("string")}
                            ),
                        }
                    )
                    for c in ("prompt", "chosen", "rejected")
                },
            }
        )
        ds = datasets.Dataset.from_list([conversational(r) for r in rows], features=features)
        ds.save_to_disk(str(folder / "data"))
        return folder / "data", {}
    if layout == "standard-parquet":  # image + plain strings
        ds = datasets.Dataset.from_dict(
            {
                "image": [r["image"] for r in rows],
                "prompt": [r["question"] for r in rows],
                "chosen": [r["chosen"] for r in rows],
                "rejected": [r["rejected"] for r in rows],
            },
            features=datasets.Features(
                {"image": datasets.Image(), **{c: datasets.Value("string") for c in ("prompt", "chosen", "rejected")}}
            ),
        )
        ds.to_parquet(str(folder / "pairs.parquet"))
        return folder / "pairs.parquet", {}
    if layout == "jsonl-paths":  # images as relative paths, content as a plain string
        (folder / "img").mkdir(exist_ok=True)
        lines = []
        for i, row in enumerate(rows):
            row["image"].save(folder / "img" / f"{i}.png")
            lines.append(
                json.dumps(
                    {
                        "images": [f"img/{i}.png"],
                        "prompt": [{"role": "user", "content": row["question"]}],
                        "chosen": [{"role": "assistant", "content": row["chosen"]}],
                        "rejected": [{"role": "assistant", "content": row["rejected"]}],
                    }
                )
            )
        (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return folder / "pairs.jsonl", {}
    if layout == "public-original":  # image, question, plain answers, extra columns; train and test splits
        cut = len(rows) * 4 // 5
        split = lambda part, offset: datasets.Dataset.from_dict(  # noqa: E731
            {
                "image": [r["image"] for r in part],
                "question": [r["question"] for r in part],
                "chosen": [r["chosen"] for r in part],
                "rejected": [r["rejected"] for r in part],
                "ds_name": ["colours"] * len(part),
                "origin_dataset": ["generated"] * len(part),
                "idx": list(range(offset, offset + len(part))),
            }
        )
        datasets.DatasetDict({"train": split(rows[:cut], 0), "test": split(rows[cut:], cut)}).save_to_disk(
            str(folder / "data")
        )
        return folder / "data", {"prompt": "question"}
    raise ValueError(layout)


LAYOUTS = ["conversational-disk", "standard-parquet", "jsonl-paths", "public-original"]


def client_toml(folder: Path, data: Path, columns: dict[str, str], extra: str = "") -> Path:
    """A site config training the dual encoder on ``data`` (TLS files need not exist to train)."""
    mapping = ", ".join(f'{k} = "{v}"' for k, v in columns.items())
    path = folder / "client.toml"
    path.write_text(
        f'site = "site-a"\n[tls]\nca = "ca.pem"\ncert = "s.pem"\nkey = "s.key"\ncrl = "crl.pem"\n'
        f'[coordinator]\nendpoint = "tcp://127.0.0.1:7000"\nname = "coord"\n'
        f'[data]\npath = "{data}"\ncolumns = {{{mapping}}}\ntest_fraction = 0.2\n'
        f'[model]\nfamily = "dual-encoder"\nwidth = 64\nmax_length = 64\n'
        f'[train]\nout = "model"\nepochs = 24\nbatch_size = 32\nlr = 0.01\n'
        f'[privacy]\ntarget_epsilon = 8.0\nmax_epsilon = 16.0\nledger = "ledger.jsonl"\n{extra}'
    )
    if not (folder / "ledger.jsonl").exists():
        SiteLedger(folder / "ledger.jsonl").start(reason="test")
    return path


def _data_group():
    from mor_secure.commands.data import group

    return group


def _client_group():
    from client_agent.commands import group

    return group


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return pairs(160)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_is_checked_trained_evaluated_and_loads_for_serving(layout, rows, tmp_path):
    from client_agent.config import load_client_config
    from client_agent.doctor import check_data
    from client_agent.scoring import load_served_model
    from client_agent.site_data import load_pairs

    data, columns = write_layout(layout, tmp_path / "raw", rows)
    args = ["check", str(data), "--test-fraction", "0.2"] + [f"--columns={k}={v}" for k, v in columns.items()]
    checked = CliRunner().invoke(_data_group(), args)
    assert checked.exit_code == 0, checked.output
    assert "ok:" in checked.output and "images     160 decoded" in checked.output
    assert "largest 48x32" in checked.output and "smallest 32x32" in checked.output
    assert "truncation dual-encoder:" in checked.output and "duplicates 0 question(s)" in checked.output
    if columns:
        assert "prompt <- 'question'" in checked.output and "ds_name, origin_dataset, idx" in checked.output
    else:
        held = [line for line in checked.output.splitlines() if line.startswith("test:")]
        assert held and "held out by content: 0.2" in held[0]

    config_path = client_toml(tmp_path, data, columns)
    trained = CliRunner().invoke(_client_group(), ["train", "--config", str(config_path), "--quiet"])
    assert trained.exit_code == 0, trained.output
    evaluated = CliRunner().invoke(_client_group(), ["eval", "--config", str(config_path), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads(evaluated.output)
    assert set(result["per_domain"]) == {"all"}  # no domain column: one overall row
    assert result["pairs"] >= 16 and result["accuracy"] > 0.8  # the colour at the answer's end is learnt
    config = load_client_config(config_path)
    assert check_data(config) == f"{len(load_pairs(config, 'train'))} preference pairs in split 'train'"  # doctor
    served = load_served_model(config, config_path)
    assert served.report["epsilon"] <= 8.0 and served.report["data_fingerprint"].startswith("content-sha256:")


def test_the_fingerprint_and_held_out_rows_follow_content_not_layout(rows, tmp_path):
    from mor_secure.data.site import open_site_data

    opened = {}
    for layout in ("conversational-disk", "standard-parquet", "jsonl-paths"):
        data, columns = write_layout(layout, tmp_path / layout, rows)
        opened[layout] = open_site_data(data, columns=columns, test_fraction=0.2)
    prints = {site.fingerprint for site in opened.values()}
    assert len(prints) == 1
    tests = {tuple(sorted(site.question_keys("test"))) for site in opened.values()}
    assert len(tests) == 1 and 16 <= len(next(iter(tests))) <= 48
    site = opened["jsonl-paths"]
    assert not set(site.question_keys("train")) & set(site.question_keys("test"))
    (tmp_path / "jsonl-paths" / "README.md").write_text("notes about this data set")
    reordered = tmp_path / "jsonl-paths" / "reordered.jsonl"
    lines = (tmp_path / "jsonl-paths" / "pairs.jsonl").read_text().splitlines()
    reordered.write_text("\n".join(reversed(lines)) + "\n")
    again = open_site_data(reordered, test_fraction=0.3)  # another fraction: same data, same budget
    assert again.fingerprint == site.fingerprint
    assert len(again.rows("test")) > len(site.rows("test"))


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels without holding them (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_data_check_names_every_bad_row_in_one_line_each(rows, tmp_path):
    data, _ = write_layout("jsonl-paths", tmp_path, rows[:12])
    (tmp_path / "img" / "0.png").write_bytes(_png_header(20000, 20000))
    (tmp_path / "img" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    lines = data.read_bytes().splitlines()
    lines[2] = lines[2].replace(b"What colour", b"What col\xffour")
    lines[3] = b'{"images": ["img/3.png"], "prompt": ' + b"[" * 100000 + b"]" * 100000 + b"}"
    chosen = b'"chosen": [{"role": "assistant", "content": '
    lines[4] = lines[4].replace(chosen, chosen + b'7, "x": ')
    lines[5] = json.dumps(
        {"images": ["img/5.png", "img/6.png"], "prompt": "q", "chosen": "a", "rejected": "b"}
    ).encode()
    data.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(_data_group(), ["check", str(data)])
    out = result.output
    assert result.exit_code == 1 and "Traceback" not in out
    refused = [line for line in out.splitlines() if line.startswith("  refused:")]
    assert len(refused) == 6, out
    assert "row 0: column 'images' is an oversized image (400000000 pixels, more than 40000000)" in out
    assert "row 1: column 'images' cannot be decoded as an image" in out
    assert "pairs.jsonl:3: not UTF-8 text" in out and "pairs.jsonl:4: JSON nested too deeply" in out
    assert "column 'chosen' has a message whose content is neither a string" in out
    assert "holds 2 images; one image per row is supported" in out
    assert "Error: 6 problem(s)" in out and "read       6 valid pairs rows of 10" in out


@pytest.mark.parametrize(
    "damage", ["bad-json-array", "garbage-parquet", "dataset-dict-json", "state-json", "arrow-file"]
)
def test_unreadable_sources_give_one_line_errors(damage, rows, tmp_path):
    if damage == "bad-json-array":
        path = tmp_path / "pairs.json"
        path.write_text('[{"prompt": "q", "chosen": "a",]')
    elif damage == "garbage-parquet":
        path = tmp_path / "pairs.parquet"
        path.write_bytes(b"PAR1" + bytes(range(256)) * 4 + b"PAR1")
    else:
        path, _ = write_layout(
            "public-original" if damage == "dataset-dict-json" else "conversational-disk", tmp_path, rows[:10]
        )
        if damage == "dataset-dict-json":
            (path / "dataset_dict.json").write_text('{"splits": ')
        elif damage == "state-json":
            (path / "state.json").write_text('{"_data_files": [{"filename": 5}]}')
        else:
            next(path.glob("*.arrow")).write_bytes(b"not arrow at all" * 10)
    result = CliRunner().invoke(
        _data_group(),
        ["check", str(path), "--columns", "prompt=question"] if damage == "dataset-dict-json" else ["check", str(path)],
    )
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("Error:")]
    assert str(path) in line and any(w in line for w in ("damaged", "not a readable parquet", "not valid JSON"))


def test_missing_columns_suggest_the_mapping(rows, tmp_path):
    data, _ = write_layout("public-original", tmp_path, rows[:10])
    result = CliRunner().invoke(_data_group(), ["check", str(data)])
    assert result.exit_code == 1
    assert "missing column 'prompt'" in result.output and "--columns prompt=question" in result.output
    wrong = CliRunner().invoke(_data_group(), ["check", str(data), "--columns", "prompt=questions"])
    assert wrong.exit_code == 1 and "has no column 'questions'" in wrong.output
    unknown = CliRunner().invoke(_data_group(), ["check", str(data), "--columns", "query=question"])
    assert unknown.exit_code == 1 and "does not read" in unknown.output


def test_coordinator_reads_router_pairs_and_grpo_prompts_in_the_same_layouts(rows, tmp_path):
    from coordinator.policy.sft import load_rows
    from mor_secure.data.loader import load_preferences

    data, columns = write_layout("public-original", tmp_path / "pairs", rows[:20])
    router = load_preferences(data, split="train", columns=columns)
    assert len(router) == 16 and "domain" not in router.column_names
    prompts = tmp_path / "prompts.jsonl"
    (tmp_path / "img").mkdir()
    lines = []
    for i, row in enumerate(rows[:6]):
        row["image"].save(tmp_path / "img" / f"{i}.png")
        lines.append(json.dumps({"image": f"img/{i}.png", "question": row["question"]}))
    prompts.write_text("\n".join(lines) + "\n")
    grpo = load_rows(prompts, columns={"prompt": "question"})
    assert len(grpo) == 6 and set(grpo.column_names) == {"image", "prompt"}
    assert grpo[0]["prompt"][0]["content"][0]["type"] == "image"
    checked = CliRunner().invoke(
        _data_group(), ["check", str(prompts), "--kind", "prompts", "--columns", "prompt=question"]
    )
    assert checked.exit_code == 0, checked.output
