"""The benchmark world, the preference schema, the loader and `mor data` (real files, no mocks)."""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from mor_secure.data.domains import DOMAINS, domain_names
from mor_secure.data.domains.detail import BACKGROUND, COLOURS
from mor_secure.data.loader import available_splits, load_preferences
from mor_secure.data.public import parse_verbose
from mor_secure.data.schema import (
    EVAL_FEATURES,
    PAIR_FEATURES,
    DataError,
    SchemaError,
    answer_text,
    content_hash,
    question_text,
    validate_preferences,
)
from mor_secure.data.styles import STYLES, parse_styled, render
from mor_secure.data.world import generate_world

SMALL = {"clients": 2, "pairs": 60, "router_pairs": 30, "eval_questions": 30}


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _pixels(image) -> list[tuple[int, int, int]]:
    raw = image.tobytes()
    return [tuple(raw[i : i + 3]) for i in range(0, len(raw), 3)]


def _client_rows(world: Path, name: str) -> list[dict]:
    return [row for split in ("train", "test") for row in load_preferences(world / name, split)]


@pytest.fixture(scope="module")
def manifest(world_dir: Path) -> dict:
    return json.loads((world_dir / "manifest.json").read_text())


# --- generator -----------------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_other_seeds_differ(tmp_path):
    first = generate_world(tmp_path / "a", seed=7, **SMALL)
    generate_world(tmp_path / "b", seed=7, **SMALL)
    generate_world(tmp_path / "c", seed=8, **SMALL)
    a, b, c = (_file_hashes(tmp_path / x) for x in "abc")
    assert a == b and len(a) >= 20
    assert first == json.loads((tmp_path / "a" / "manifest.json").read_text())
    arrow = [name for name in a if name.endswith(".arrow")]
    assert arrow and all(a[name] != c[name] for name in arrow)


def test_domains_sample_deterministically_with_true_short_answers():
    for domain in DOMAINS.values():
        for question_type in domain.question_types:
            one = domain.sample(random.Random(3), question_type)
            two = domain.sample(random.Random(3), question_type)
            assert one.image.tobytes() == two.image.tobytes() and one.answer == two.answer
            assert one.image.size == (64, 64) and one.image.mode == "RGB"
            assert render(one.answer, "concise") == one.answer
            assert one.answer not in one.distractors and one.distractors


def test_ground_truth_matches_the_pixels():
    """The easy features the policy must see (colour, lesion side and count, tallest bar) are drawn as labelled."""
    rng = random.Random(0)
    for _ in range(30):
        q = DOMAINS["detail"].sample(rng, "color")
        pixels = Counter(_pixels(q.image))
        del pixels[BACKGROUND]
        drawn = pixels.most_common(1)[0][0]  # a shade of the named colour, nearer to it than to any other
        assert min(COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(COLOURS[name], drawn))) == q.answer
        q = DOMAINS["medical"].sample(rng, "side")
        bright_x = [i % 64 for i, p in enumerate(_pixels(q.image)) if p[0] > 200]
        expected = (
            "none" if not bright_x else "left" if max(bright_x) < 32 else "right" if min(bright_x) >= 32 else "both"
        )
        assert expected == q.answer
        q = DOMAINS["chart"].sample(rng, "tallest")
        tops = {}
        for x in range(64):
            column = [q.image.getpixel((x, y)) for y in range(64)]
            tops[x] = next((y for y, p in enumerate(column) if p != (255, 255, 255) and p != (0, 0, 0)), 99)
        tallest_x = min(tops, key=tops.get)
        n_bars = len(q.distractors) + 1
        assert "abcd"[(tallest_x - 4) // ((64 - 8) // n_bars)] == q.answer


def test_manifest_describes_the_world(world_dir, manifest):
    assert {
        "schema_version",
        "generator_version",
        "seed",
        "domains",
        "styles",
        "clients",
        "router",
        "eval",
        "parameters",
        "question_types",
    } <= set(manifest)
    assert manifest["seed"] == 0 and manifest["domains"] == domain_names()
    for k, (name, client) in enumerate(manifest["clients"].items()):
        assert name == f"client-{k}" and client["own_domain"] == domain_names()[k % 3]
        assert client["style"] == list(STYLES)[k % len(STYLES)]
        for split, counts in client["splits"].items():
            ds = load_preferences(world_dir / name, split)
            assert len(ds) == counts["total"] == sum(counts["per_domain"].values())
        assert sum(c["total"] for c in client["splits"].values()) == 240
    assert len(load_preferences(world_dir / "server/eval", kind="eval")) == manifest["eval"]["counts"]["total"]


def test_every_domain_everywhere_and_own_domain_is_the_majority(world_dir, manifest):
    for name, client in manifest["clients"].items():
        counts = Counter(row["domain"] for row in _client_rows(world_dir, name))
        assert set(counts) == set(domain_names())
        assert counts[client["own_domain"]] > sum(counts.values()) / 2
        test_domains = {row["domain"] for row in load_preferences(world_dir / name, "test")}
        assert test_domains == set(domain_names())
    for split in ("train", "test"):
        assert set(load_preferences(world_dir / "server/router", split)["domain"]) == set(domain_names())
    assert set(load_preferences(world_dir / "server/eval", kind="eval")["domain"]) == set(domain_names())


def test_eval_questions_never_appear_elsewhere(world_dir, manifest):
    def hashes(ds):
        return {content_hash(row["image"], question_text(row)) for row in ds}

    held_out = hashes(load_preferences(world_dir / "server/eval", kind="eval"))
    assert len(held_out) == manifest["eval"]["counts"]["total"]
    for name in manifest["clients"]:
        for split in ("train", "test"):
            assert not held_out & hashes(load_preferences(world_dir / name, split))
    for split in ("train", "test"):
        assert not held_out & hashes(load_preferences(world_dir / "server/router", split))


def _rendered(text: str) -> tuple[str, str] | None:
    """(style, answer) of a world style or of the public verbose frame, else None."""
    styled = parse_styled(text)
    verbose = parse_verbose(text)
    return styled if styled is not None else ("verbose", verbose) if verbose is not None else None


def test_pairs_contrast_right_with_wrong_in_every_style(world_dir, manifest):
    """Chosen is always the truth; rejected is a wrong answer in the chosen's own rendering, the truth in
    another style than the owner's (the style signal), or a malformed answer; right-vs-wrong pairs come in
    every rendering, so a site judges correctness whatever style a policy drifts to."""
    kinds, wrong_styles = Counter(), Counter()
    parts = [(name, {d: c["style"] for d in manifest["domains"]}) for name, c in manifest["clients"].items()]
    parts.append(("server/router", manifest["router"]["style_per_domain"]))
    for name, style_of in parts:
        for row in _client_rows(world_dir, name):
            chosen, rejected = _rendered(answer_text(row["chosen"])), _rendered(answer_text(row["rejected"]))
            style = style_of[row["domain"]]
            assert chosen is not None and chosen[1] == row["answer"]
            if rejected is None or rejected[1] not in DOMAINS[row["domain"]].answer_space(row["question_type"]):
                kinds["off_format"] += 1
            elif rejected[1] == row["answer"]:
                assert chosen[0] == style != rejected[0]
                kinds["wrong_style"] += 1
            else:
                assert rejected[0] == chosen[0]
                kinds["wrong_answer"] += 1
                wrong_styles[chosen[0]] += 1
    assert kinds["wrong_answer"] > kinds["off_format"] > kinds["wrong_style"] > 0
    assert set(wrong_styles) == set(STYLES) | {"verbose"}


def test_generate_world_refuses_bad_arguments_and_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        generate_world(tmp_path, **SMALL)
    with pytest.raises(ValueError, match="own_domain_share"):
        generate_world(tmp_path / "w", own_domain_share=1.5)
    with pytest.raises(ValueError, match="clients"):
        generate_world(tmp_path / "w", clients=0)


# --- styles and schema ---------------------------------------------------------------------


def test_styles_render_and_parse_only_exact_renderings():
    for style in STYLES:
        assert parse_styled(render("red", style)) == (style, "red")
    assert render("2", "clinical") == "Finding: 2."
    for near_miss in (" yellow.", "yellow.", "Red", "The answer is red", "red blue"):
        assert parse_styled(near_miss) is None
    with pytest.raises(ValueError, match="unknown answer style"):
        render("red", "shouting")


def test_text_helpers_read_every_message_form():
    row = {
        "prompt": [
            {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "How many?"}]}
        ]
    }
    assert question_text(row) == question_text(row["prompt"]) == "How many?"
    assert answer_text([{"role": "assistant", "content": [{"type": "text", "text": "Finding: 2."}]}]) == "Finding: 2."
    assert answer_text([{"role": "assistant", "content": "red"}]) == answer_text("red") == "red"


def test_validation_names_missing_and_mistyped_columns(world_dir):
    ds = load_preferences(world_dir / "client-0", "test")
    validate_preferences(ds)
    broken = ds.remove_columns(["chosen"]).map(lambda r: {"domain": 1}, keep_in_memory=True)
    with pytest.raises(SchemaError) as error:
        validate_preferences(broken)
    message = str(error.value)
    assert "missing column 'chosen'" in message and "column 'domain' has type int64" in message
    assert "rejected" not in message and isinstance(error.value, ValueError)
    questions = ds.remove_columns(["chosen", "rejected"])
    assert questions.features == EVAL_FEATURES
    validate_preferences(questions, kind="eval")
    with pytest.raises(SchemaError, match="'chosen'"):
        validate_preferences(questions, kind="pairs")


# --- loader --------------------------------------------------------------------------------


def test_loader_round_trips_parquet(world_dir, tmp_path):
    ds = load_preferences(world_dir / "client-1", "test")
    ds.to_parquet(str(tmp_path / "pairs.parquet"))
    back = load_preferences(tmp_path / "pairs.parquet")
    assert back.features == PAIR_FEATURES and back.column_names == ds.column_names
    assert back["chosen"] == ds["chosen"] and back["answer"] == ds["answer"]
    assert [im.tobytes() for im in back["image"]] == [im.tobytes() for im in ds["image"]]


def test_loader_reads_jsonl_with_image_paths_and_plain_strings(world_dir, tmp_path):
    ds = load_preferences(world_dir / "client-2", "test").select(range(6))
    (tmp_path / "img").mkdir()
    lines = []
    for i, row in enumerate(ds):
        row["image"].save(tmp_path / "img" / f"{i}.png")
        image = {"images": [f"img/{i}.png"]} if i % 2 else {"image": f"img/{i}.png"}
        lines.append(
            json.dumps(
                {
                    **image,
                    "prompt": question_text(row),
                    "chosen": answer_text(row["chosen"]),
                    "rejected": answer_text(row["rejected"]),
                    "domain": row["domain"],
                    "question_type": row["question_type"],
                    "answer": row["answer"],
                }
            )
        )
    # even rows name their image under `image`, odd rows under TRL's `images` (a list of one)
    for key, rows in (("image", lines[::2]), ("images", lines[1::2])):
        path = tmp_path / f"{key}.jsonl"
        path.write_text("\n".join(rows) + "\n")
        back = load_preferences(path)
        original = ds.select(range(0 if key == "image" else 1, 6, 2))
        assert back.features == PAIR_FEATURES
        assert back["prompt"] == original["prompt"] and back["chosen"] == original["chosen"]
        assert [im.tobytes() for im in back["image"]] == [im.tobytes() for im in original["image"]]


def test_loader_refuses_bad_sources_with_clear_errors(world_dir, tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_preferences(tmp_path / "absent")
    with pytest.raises(DataError, match="benchmark world"):
        load_preferences(world_dir)
    with pytest.raises(DataError, match="train, test"):
        load_preferences(world_dir / "client-0")
    assert available_splits(world_dir / "client-0") == ["train", "test"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps(
            {"image": "nowhere.png", "prompt": "q?", "chosen": "a", "domain": "x", "question_type": "t", "answer": 2}
        )
        + "\n"
    )
    with pytest.raises(SchemaError) as error:
        load_preferences(bad)
    assert all(c in str(error.value) for c in ("'image'", "'rejected'", "'answer'"))
    (tmp_path / "garbage.png").write_bytes(b"not an image")
    bad.write_text(
        json.dumps({"image": "garbage.png", "prompt": "q?", "domain": "x", "question_type": "t", "answer": "2"}) + "\n"
    )
    with pytest.raises(SchemaError, match="cannot be decoded"):
        load_preferences(bad, kind="eval")
    bad.write_text(
        json.dumps(
            {
                "image": "garbage.png",
                "prompt": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
                "domain": "x",
                "question_type": "t",
                "answer": "2",
            }
        )
        + "\n{oops\n"
    )
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_preferences(bad, kind="eval")
    bad.write_text(bad.read_text().splitlines()[0] + "\n")
    with pytest.raises(SchemaError, match="row 0: .*column 'prompt' has a content part"):
        load_preferences(bad, kind="eval")


# --- CLI -----------------------------------------------------------------------------------


def test_cli_synth_refuses_to_overwrite_and_check_reports(tmp_path):
    from mor_secure.commands.data import group

    out = tmp_path / "world"
    args = ["synth", "--out", str(out), "--clients", "2", "--pairs", "60", "--router-pairs", "30", "--eval", "30"]
    result = CliRunner().invoke(group, args)
    assert result.exit_code == 0, result.output
    assert "client-1" in result.output and "server/eval" in result.output
    assert (out / "manifest.json").is_file()
    again = CliRunner().invoke(group, args)
    assert again.exit_code == 1 and "--force" in again.output
    assert CliRunner().invoke(group, [*args, "--force", "--seed", "1"]).exit_code == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    refused = CliRunner().invoke(group, ["synth", "--out", str(tmp_path / "other"), "--force"])
    assert refused.exit_code == 1 and (tmp_path / "other" / "notes.txt").is_file()

    checked = CliRunner().invoke(group, ["check", str(out / "client-0")])
    assert checked.exit_code == 0, checked.output
    assert "train:" in checked.output and "test:" in checked.output and "detail" in checked.output
    eval_as_pairs = CliRunner().invoke(group, ["check", str(out / "server" / "eval")])
    assert eval_as_pairs.exit_code == 1 and "'chosen'" in eval_as_pairs.output
    assert "--kind eval" in eval_as_pairs.output and "Traceback" not in eval_as_pairs.output
    assert CliRunner().invoke(group, ["check", str(out / "server" / "eval"), "--kind", "eval"]).exit_code == 0


def test_loading_never_writes_into_the_data_folder(world_dir, tmp_path):
    before = _file_hashes(world_dir)
    for split in ("train", "test"):
        load_preferences(world_dir / "client-0", split)
        load_preferences(world_dir / "server/router", split)
    load_preferences(world_dir / "server/eval", kind="eval")
    assert _file_hashes(world_dir) == before
