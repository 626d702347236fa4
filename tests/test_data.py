"""Data schema, loaders, chat formatting and assistant-only label masking."""

import json

import pytest

from bidsml.data.examples import IGNORE_INDEX, Example, iter_batches, read_jsonl, tokenize_example
from bidsml.errors import DataError


def _ex(user="What is 2+2?", assistant="4", **kw):
    return Example(
        id="x/1",
        source="t",
        messages=[{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
        **kw,
    )


def test_labels_cover_exactly_the_assistant_turn(tokenizer):
    t = tokenize_example(tokenizer, _ex(assistant="The answer is four."), 256)
    labelled = tokenizer.decode([i for i, l in zip(t.input_ids, t.labels) if l != IGNORE_INDEX])
    assert labelled.startswith("The answer is four.")
    assert labelled.replace("The answer is four.", "").strip() in {"<|im_end|>", "<|im_end|>\n"}
    prompt = tokenizer.decode([i for i, l in zip(t.input_ids, t.labels) if l == IGNORE_INDEX])
    assert "What is 2+2?" in prompt and "The answer" not in prompt
    assert all(l in (IGNORE_INDEX, i) for i, l in zip(t.input_ids, t.labels))


def test_multi_turn_masks_every_assistant_turn_only(tokenizer):
    ex = Example(
        id="m/1",
        source="t",
        messages=[
            {"role": "user", "content": "Say A"},
            {"role": "assistant", "content": "AAA"},
            {"role": "user", "content": "Say B"},
            {"role": "assistant", "content": "BBB"},
        ],
    )
    t = tokenize_example(tokenizer, ex, 256)
    labelled = tokenizer.decode([i for i, l in zip(t.input_ids, t.labels) if l != IGNORE_INDEX])
    assert "AAA" in labelled and "BBB" in labelled and "Say" not in labelled


def test_tulu_format_when_the_recipe_asks_for_it(tokenizer):
    import copy

    from bidsml.model import TULU_TEMPLATE

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = None
    with pytest.raises(DataError, match=r"no chat template: set `model.chat_template`"):
        tokenize_example(tok, _ex(assistant="yes indeed"), 256)
    tok.chat_template = TULU_TEMPLATE
    t = tokenize_example(tok, _ex(assistant="yes indeed"), 256)
    text = tok.decode(t.input_ids)
    assert text.startswith("<|user|>\nWhat is 2+2?\n<|assistant|>\nyes indeed")
    assert tok.decode([i for i, l in zip(t.input_ids, t.labels) if l != IGNORE_INDEX]).strip() == "yes indeed"


def test_truncation_is_counted_and_empty_mask_rejected_with_id(tokenizer):
    long_answer = " ".join(["word"] * 200)
    t = tokenize_example(tokenizer, _ex(assistant=long_answer), 60)
    assert t.truncated and len(t.input_ids) == 60 and t.n_label_tokens > 0
    with pytest.raises(DataError, match=r"example 'x/1': no assistant token left after truncation"):
        tokenize_example(tokenizer, _ex(user=" ".join(["long"] * 100)), 40)


def test_read_jsonl_names_file_line_and_field(tmp_path):
    p = tmp_path / "pool.jsonl"
    good = {
        "id": "a",
        "source": "s",
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
    }
    bad_role = {
        **good,
        "id": "b",
        "messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}],
    }
    p.write_text(json.dumps(good) + "\n" + json.dumps(bad_role) + "\n")
    with pytest.raises(DataError, match=r"pool\.jsonl:2: field 'messages\.0\.role': unknown role 'robot'"):
        read_jsonl(p)
    p.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataError, match=r"pool\.jsonl:2: not valid JSON"):
        read_jsonl(p)
    p.write_text(json.dumps({"source": "s", "messages": good["messages"]}) + "\n")
    with pytest.raises(DataError, match=r"pool\.jsonl:1: field 'id': Field required"):
        read_jsonl(p)
    p.write_text(json.dumps({**good, "messages": [{"role": "user", "content": "q"}]}) + "\n")
    with pytest.raises(DataError, match=r"no non-empty assistant message"):
        read_jsonl(p)
    # non-strict: skipped with reasons, counts in and out
    p.write_text(json.dumps(good) + "\n" + json.dumps(bad_role) + "\n")
    exs, rep = read_jsonl(p, strict=False)
    assert [e.id for e in exs] == ["a"] and rep.read == 2 and rep.kept == 1 and "robot" in rep.rejected[0]


def test_batches_respect_token_budget_and_cover_all(tokenizer):
    from bidsml.data.examples import tokenize_all
    from tests.conftest import make_examples

    items, _ = tokenize_all(tokenizer, make_examples(30), 128)
    batches = list(iter_batches(items, max_tokens=200))
    assert sorted(i for b in batches for i in b) == list(range(30))
    for b in batches:
        lengths = [len(items[i].input_ids) for i in b]
        assert len(b) == 1 or max(lengths) * len(b) <= 200
        assert max(lengths) <= 1.2 * min(lengths)  # padding stays bounded


def test_hf_disk_loader_validates_records(tmp_path):
    import datasets

    from bidsml.data.examples import read_hf_disk

    rows = [
        {
            "id": "h1",
            "source": "hf",
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        },
        {
            "id": "h2",
            "source": "hf",
            "messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": ""}],
        },
    ]
    datasets.Dataset.from_list(rows[:1]).save_to_disk(str(tmp_path / "ok"))
    exs, rep = read_hf_disk(tmp_path / "ok")
    assert [e.id for e in exs] == ["h1"] and rep.kept == 1
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(DataError, match=r"bad\[record 1\]: field 'messages': no non-empty assistant message"):
        read_hf_disk(tmp_path / "bad")


def _pool_cfg(pool, targets=({"task": "mmlu"},)):
    from bidsml.config import DataConfig

    return DataConfig.model_validate({"pool": list(pool), "targets": list(targets)})


def test_pool_loading_errors_name_the_source_entry(tmp_path):
    import json

    from bidsml.data.prepare import load_pool

    f = tmp_path / "pool.jsonl"
    f.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"p{i}",
                    "source": "mine",
                    "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                }
            )
            + "\n"
            for i in range(3)
        )
    )
    pool, counts = load_pool(_pool_cfg([{"source": "jsonl", "path": str(f), "n": 2}]), seed=0)
    assert len(pool) == 2 and counts[str(f)]["available"] == 3 and counts[str(f)]["taken"] == 2
    with pytest.raises(DataError, match=r"data\.pool\.0: asked for n=5 from 'jsonl', which has 3"):
        load_pool(_pool_cfg([{"source": "jsonl", "path": str(f), "n": 5}]), seed=0)
    with pytest.raises(DataError, match="3 duplicate example ids"):
        load_pool(_pool_cfg([{"source": "jsonl", "path": str(f)}, {"source": "jsonl", "path": str(f)}]), seed=0)
    with pytest.raises(DataError, match=r"data\.pool\.1: .*missing\.jsonl"):
        load_pool(
            _pool_cfg(
                [{"source": "jsonl", "path": str(f)}, {"source": "jsonl", "path": str(tmp_path / "missing.jsonl")}]
            ),
            seed=0,
        )
    with pytest.raises(
        DataError, match=r"data\.pool\.0: source 'code_multilang' holds the test problems of target 'mbpp'"
    ):
        load_pool(_pool_cfg([{"source": "code_multilang"}], targets=[{"task": "mbpp"}]), seed=0)
