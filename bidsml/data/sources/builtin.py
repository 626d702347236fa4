"""Built-in pool sources: sets that are NOT evaluation targets, as FLAN-style instruction/response pairs.

Each is registered by name; `contaminates` names a benchmark whose test
problems it holds (in another form).
"""

from __future__ import annotations

from collections.abc import Callable

from bidsml.data.examples import Example
from bidsml.data.offline import chat_pair, hf_rows, parse_repr, request_docs
from bidsml.data.sources.base import register_source


def _sciq() -> list[Example]:
    out = []
    for i, r in enumerate(hf_rows("sciq/none/validation")):
        expl = (
            f"{r['support'].strip()}\n\nSo the answer is {r['correct_answer']}."
            if r["support"]
            else r["correct_answer"]
        )
        out.append(chat_pair("sciq", i, f"Answer this science question.\n{r['question']}", expl))
    return out


def _boolq() -> list[Example]:
    return [
        chat_pair(
            "boolq",
            i,
            f"{r['passage']}\n\nBased on the passage, {r['question']}?",
            "Yes." if r["answer"] in (True, "True") else "No.",
        )
        for i, r in enumerate(hf_rows("boolq/none/validation"))
    ]


def _csqa() -> list[Example]:
    out = []
    for i, r in enumerate(hf_rows("tau/commonsense_qa/none/validation")):
        ch = parse_repr(r["choices"])
        gold = ch["label"].index(r["answerKey"])
        out.append(chat_pair("commonsense_qa", i, f"Use common sense. {r['question']}", ch["text"][gold]))
    return out


def _trivia() -> list[Example]:
    return [
        chat_pair("trivia_qa", i, r["question"], parse_repr(r["answer"])["value"])
        for i, r in enumerate(hf_rows("trivia_qa/rc.wikipedia.nocontext/validation"))
    ]


def _nq() -> list[Example]:
    return [
        chat_pair("nq_open", i, f"{r['question']}?", parse_repr(r["answer"])[0])
        for i, r in enumerate(hf_rows("nq_open/none/validation"))
    ]


def _siqa() -> list[Example]:
    out = []
    for i, r in enumerate(hf_rows("social_i_qa/none/validation")):
        ans = [r["answerA"], r["answerB"], r["answerC"]][int(r["label"]) - 1]
        out.append(chat_pair("social_iqa", i, f"{r['context']}\n{r['question']}", ans))
    return out


def _piqa() -> list[Example]:
    return [
        chat_pair(
            "piqa", i, f"How would you accomplish this goal?\n{r['goal']}", [r["sol1"], r["sol2"]][int(r["label"])]
        )
        for i, r in enumerate(hf_rows("piqa/plain_text/validation"))
    ]


def _hellaswag() -> list[Example]:
    return [
        chat_pair("hellaswag", i, f"Continue the text.\n{r['ctx']}", parse_repr(r["endings"])[int(r["label"])])
        for i, r in enumerate(hf_rows("hellaswag/none/validation"))
    ]


def _winogrande() -> list[Example]:
    out = []
    for i, r in enumerate(hf_rows("winogrande/winogrande_xl/validation")):
        ans = [r["option1"], r["option2"]][int(r["answer"]) - 1]
        out.append(
            chat_pair("winogrande", i, f"Fill in the blank (_):\n{r['sentence']}", r["sentence"].replace("_", ans))
        )
    return out


def _math() -> list[Example]:
    subjects = [
        "algebra",
        "counting_and_probability",
        "geometry",
        "intermediate_algebra",
        "number_theory",
        "prealgebra",
        "precalculus",
    ]
    out = []
    for s in subjects:
        for i, d in enumerate(request_docs(f"minerva_math_{s}", "gold_bpb_0shot")):
            out.append(chat_pair("math", f"{s}/{i}", f"Solve the problem.\n{d['problem']}", d["solution"]))
    return out


def _squad() -> list[Example]:
    out = []
    for i, d in enumerate(request_docs("squad", "bpb_5shot")):
        ans = d.get("answers_text") or d.get("choices") or d.get("answers")
        ans = ans[0] if isinstance(ans, list) else ans
        out.append(chat_pair("squad", i, d["query"].replace("Answer:", "").strip(), str(ans)))
    return out


def _mt_code() -> list[Example]:
    out = []
    for lang in ["javascript", "java", "cpp", "rust", "go", "ruby"]:
        for i, d in enumerate(request_docs(f"mt_mbpp_{lang}", "gold_bpb_3shot")):
            text = d.get("text") or d.get("prompt") or d.get("query")
            code = d.get("code") or d.get("canonical_solution") or (d.get("choices") or [None])[0]
            if text and code:
                out.append(chat_pair(f"code_{lang}", i, f"Write a {lang} program.\n{text}", code))
    return out


def _basic_skills(skill: str, src: str, instruction: str) -> Callable[[], list[Example]]:
    def load() -> list[Example]:
        out = []
        for d in request_docs(f"basic_skills_{skill}", "rc_5shot"):
            q = d["question"]
            out.append(
                chat_pair(
                    src,
                    d["id"],
                    f"{instruction}\n{q}",
                    f"{q} {d['choices'][d['gold']]}" if skill == "coding" else d["choices"][d["gold"]],
                )
            )
        return out

    return load


register_source("sciq")(_sciq)
register_source("boolq", contaminates="boolq")(_boolq)
register_source("commonsense_qa")(_csqa)
register_source("trivia_qa")(_trivia)
register_source("nq_open")(_nq)
register_source("social_iqa")(_siqa)
register_source("piqa", contaminates="piqa")(_piqa)
register_source("hellaswag", contaminates="hellaswag")(_hellaswag)
register_source("winogrande", contaminates="winogrande")(_winogrande)
register_source("math")(_math)
register_source("squad")(_squad)
register_source("code_multilang", contaminates="mbpp")(_mt_code)
register_source("basic_coding")(_basic_skills("coding", "basic_coding", "Complete the Python code."))
register_source("basic_arithmetic")(_basic_skills("arithmetic", "basic_arithmetic", "Compute."))
register_source("basic_logic")(_basic_skills("logical_reasoning", "basic_logic", "Complete the reasoning."))
