"""Tests of grpo_lab/envs/lm_tasks.py against hand-worked examples and independent answers:
answers recomputed from the prompt with plain Python (int addition, sorted, slicing, and Python's
own ``eval`` for countdown expressions), hand-written token ids, and hypothesis properties for the
tokenizer and for rewards on arbitrary text."""

import json
import math
import random
import re
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo_lab.envs.lm_tasks import (
    BOS,
    EOS,
    LM_TASKS,
    PAD,
    AdditionTask,
    CharTokenizer,
    CountdownTask,
    Example,
    LMTask,
    ReverseTask,
    SortTask,
    check_context,
    check_tokenizer,
    encode_prompts,
    encode_sft,
    evaluate_expression,
    make_task,
    task_tokenizer,
)

FR = 0.25  # a format reward distinct from 0 and 1

# (name, kwargs) covering every task, defaults and a few other settings
CONFIGS = [
    ("addition", {}),
    ("addition", {"digits": 1}),
    ("addition", {"digits": 4}),
    ("sort", {}),
    ("sort", {"length": 2}),
    ("reverse", {}),
    ("reverse", {"length": 3, "letters": "xyZ"}),
    ("countdown", {}),
    ("countdown", {"numbers": 4, "max_number": 20}),
    ("countdown", {"numbers": 2, "ops": "-"}),
    ("countdown", {"numbers": 3, "max_number": 12, "ops": "+*"}),
]
CONFIG_IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in CONFIGS]


def independent_answer(task_name: str, prompt: str) -> str:
    """The reference answer recomputed from the prompt alone (not for countdown)."""
    if task_name == "addition":
        a, b = re.fullmatch(r"(\d+)\+(\d+)=", prompt).groups()
        return str(int(a) + int(b))
    if task_name == "sort":
        return "".join(sorted(re.fullmatch(r"sort:(\d+)=", prompt).group(1)))
    return re.fullmatch(r"rev:([a-zA-Z]+)=", prompt).group(1)[::-1]


# ---------------------------------------------------------------------------------------------
# tokenizer


def test_tokenizer_ids_by_hand():
    tok = CharTokenizer("ab")
    assert (PAD, BOS, EOS) == ("<pad>", "<bos>", "<eos>")
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == len(tok) == 5
    assert tok.encode("ba") == [4, 3]
    assert tok.encode("ba", bos=True, eos=True) == [1, 4, 3, 2]
    assert tok.encode("") == []
    assert tok.can_encode("abba") and not tok.can_encode("abc")


def test_tokenizer_decode_by_hand():
    tok = CharTokenizer("ab")
    ids = [0, 1, 3, 4, 2, 3, 0]
    assert tok.decode(ids) == "ab"
    assert tok.decode(ids, stop_at_eos=False) == "aba"
    assert tok.decode(ids, skip_special=False) == "<pad><bos>ab<eos>"
    assert tok.decode(ids, skip_special=False, stop_at_eos=False) == "<pad><bos>ab<eos>a<pad>"
    assert tok.decode(torch.tensor(ids)) == "ab"
    assert tok.decode([]) == ""


def test_tokenizer_errors():
    with pytest.raises(ValueError, match=r"repeats characters \['a'\]"):
        CharTokenizer("aba")
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer("")
    tok = CharTokenizer("ab")
    with pytest.raises(ValueError, match=r"ids \[5\] out of range"):
        tok.decode([3, 5])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.tensor([[3, 4]]))
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.tensor([3.0]))


@settings(max_examples=50)
@given(st.data())
def test_tokenizer_round_trip(data):
    alphabet = "".join(dict.fromkeys(data.draw(st.text(min_size=1, max_size=30))))
    tok = CharTokenizer(alphabet)
    text = data.draw(st.text(alphabet=alphabet, max_size=50))
    ids = tok.encode(text, bos=True, eos=True)
    assert all(3 <= i < tok.vocab_size for i in ids[1:-1])
    assert tok.decode(ids) == text
    assert tok.decode(torch.tensor(ids)) == text


@given(st.text(max_size=20), st.text(min_size=1, max_size=5))
def test_tokenizer_rejects_unknown_characters(text, extra):
    alphabet = "0123456789+="
    unknown = sorted(set(extra) - set(alphabet))
    if not unknown:
        return
    tok = CharTokenizer(alphabet)
    bad = text + extra
    assert not tok.can_encode(bad)
    with pytest.raises(ValueError) as err:
        tok.encode(bad)
    message = str(err.value)
    assert repr(alphabet) in message
    for c in sorted(set(bad) - set(alphabet)):
        assert repr(c) in message


def test_tokenizer_save_load(tmp_path):
    tok = CharTokenizer("xyz:=")
    assert CharTokenizer.from_dict(tok.to_dict()) == tok
    assert json.loads(json.dumps(tok.to_dict())) == tok.to_dict()
    path = tmp_path / "sub" / "tok.json"
    tok.save(path)
    loaded = CharTokenizer.load(path)
    assert loaded == tok and loaded.encode("zx=") == tok.encode("zx=")
    assert CharTokenizer.load(str(path)) == tok

    missing = tmp_path / "nope.json"
    with pytest.raises((FileNotFoundError, ValueError), match="nope.json"):
        CharTokenizer.load(missing)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json"):
        CharTokenizer.load(broken)
    with pytest.raises(ValueError, match="alphabet"):
        CharTokenizer.from_dict({"special_tokens": ["<pad>", "<bos>", "<eos>"]})
    with pytest.raises(ValueError, match="special_tokens"):
        CharTokenizer.from_dict({"alphabet": "ab", "special_tokens": ["<s>", "</s>", "<pad>"]})


# ---------------------------------------------------------------------------------------------
# hand-worked rewards


def test_addition_rewards_by_hand():
    task = AdditionTask(format_reward=FR)
    ex = Example("12+34=", "46")
    assert task.reward(ex, "46") == 1.0
    assert task.reward(ex, " 46\n") == 1.0
    assert task.is_correct(ex, "46 ") and not task.is_correct(ex, "47")
    for wrong in ["47", "046", "0", "99999999999999999999999999"]:
        assert task.reward(ex, wrong) == FR
    for malformed in ["", "   ", "4 6", "46a", "+46", "-46", "4.6", "٤٦", "４６", "²"]:
        assert task.reward(ex, malformed) == 0.0
    assert AdditionTask().reward(ex, "47") == 0.0
    assert task.reward(ex, None) == 0.0


def test_sort_rewards_by_hand():
    task = SortTask(format_reward=FR)
    ex = Example("sort:40213=", "01234")
    assert task.reward(ex, "01234") == 1.0
    assert task.reward(ex, "\t01234 ") == 1.0
    for wrong in ["43210", "1234", "012345", "0"]:
        assert task.reward(ex, wrong) == FR
    for malformed in ["", "0123a", "0,1,2,3,4", "sort:01234"]:
        assert task.reward(ex, malformed) == 0.0
    assert SortTask().reward(ex, "43210") == 0.0


def test_reverse_rewards_by_hand():
    task = ReverseTask(format_reward=FR)
    ex = Example("rev:abcde=", "edcba")
    assert task.reward(ex, "edcba") == 1.0
    for wrong in ["abcde", "edcb", "eeeee"]:
        assert task.reward(ex, wrong) == FR
    for malformed in ["", "edcbf", "EDCBA", "ed cba", "edcba="]:
        assert task.reward(ex, malformed) == 0.0
    assert ReverseTask().reward(ex, "abcde") == 0.0


def test_countdown_rewards_by_hand():
    task = CountdownTask(format_reward=FR)
    ex = Example("3,5,7>22=", "3*5+7")
    for right in ["3*5+7", "7+5*3", "5*3+7", " 7+3*5\n"]:
        assert task.reward(ex, right) == 1.0
    for wrong in ["3+5+7", "3*5*7", "7-5-3", "7", "3*5"]:  # legal moves, wrong value
        assert task.reward(ex, wrong) == FR
    for malformed in ["", "22", "3*5+7+0", "3*5+7*1", "3*3+7", "(3*5)+7", "3 * 5 + 7", "3*5+07"]:
        assert task.reward(ex, malformed) == 0.0
    for malformed in ["3*5+", "*3*5", "3**5", "3/5", "-3+25", "3*5+7=", "3x5"]:
        assert task.reward(ex, malformed) == 0.0
    assert CountdownTask().reward(ex, "3+5+7") == 0.0


def test_countdown_subset_reuse_and_repeats():
    task = CountdownTask(format_reward=FR)
    ex = Example("2,3,4>8=", "2*4")
    assert task.reward(ex, "2*4") == 1.0  # a subset of the numbers is enough
    assert task.reward(ex, "4+4") == 0.0  # 4 used twice: value right, rules broken
    assert task.reward(ex, "2*2*2") == 0.0
    assert task.reward(ex, "8") == 0.0  # 8 is not given
    twice = Example("3,3,7>16=", "3*3+7")  # 3 given twice may be used twice, not three times
    assert task.reward(twice, "3*3+7") == 1.0
    assert task.reward(twice, "3*3+3") == 0.0
    negative = Example("3,2,5>-7=", "3-2*5")
    assert task.reward(negative, "3-5*2") == 1.0
    assert task.reward(negative, "2-3*5") == FR
    only_plus = CountdownTask(ops="+", format_reward=FR)
    assert only_plus.reward(ex, "2*4") == 0.0  # "*" is not an operator of this task
    assert only_plus.reward(Example("2,3,4>9=", "2+3+4"), "4+3+2") == 1.0


def test_countdown_parse_prompt():
    task = CountdownTask()
    assert task.parse_prompt("3,5,7>22=") == ([3, 5, 7], 22)
    assert task.parse_prompt("12,1>-11=") == ([12, 1], -11)
    for bad in ["3,5,7=22", "3,5,7>22", ",3>1=", "3,5>x="]:
        with pytest.raises(ValueError, match="countdown prompt"):
            task.parse_prompt(bad)


def test_evaluate_expression_by_hand():
    assert evaluate_expression("2+3*4") == 14
    assert evaluate_expression("2*3-4*5") == -14
    assert evaluate_expression("10-2-3") == 5
    assert evaluate_expression("2*3*4-1+0") == 23
    assert evaluate_expression("7") == 7
    for bad in ["", "1+", "+1", "(1)", "01", "1 + 2", "1//2", "1e3", "٣", "1_000"]:
        assert evaluate_expression(bad) is None
    assert evaluate_expression("2*3", ops="+-") is None
    assert evaluate_expression("9" * 1001) is None  # past the digit limit, not an exception


@settings(max_examples=50)
@given(
    st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
    st.lists(st.sampled_from("+-*"), min_size=7, max_size=7),
)
def test_evaluate_expression_matches_python(numbers, ops):
    expr = "".join(f"{op}{x}" for op, x in zip(["", *ops], numbers, strict=False))
    assert evaluate_expression(expr) == eval(expr)


# ---------------------------------------------------------------------------------------------
# properties of every task

TASKS = [make_task(name, format_reward=FR, **kw) for name, kw in CONFIGS]


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_reference_answers_score_one(name, kwargs):
    task = make_task(name, **kwargs)
    tok = task_tokenizer(task)
    check_tokenizer(tok, task)
    for seed in range(10):
        for ex in task.sample(40, seed):
            assert task.reward(ex, ex.answer) == 1.0 and task.is_correct(ex, ex.answer)
            assert len(ex.prompt) <= task.max_prompt_len
            assert 1 <= len(ex.answer) <= task.max_answer_len
            assert set(ex.prompt + ex.answer) <= set(task.alphabet)
            assert tok.decode(tok.encode(ex.prompt + ex.answer, eos=True)) == ex.prompt + ex.answer
            if name != "countdown":
                assert ex.answer == independent_answer(name, ex.prompt)


@pytest.mark.parametrize(("name", "kwargs"), [c for c in CONFIGS if c[0] == "countdown"])
def test_countdown_reference_is_valid_by_eval(name, kwargs):
    task = make_task(name, **kwargs)
    for seed in range(10):
        for ex in task.sample(40, seed):
            m = re.fullmatch(r"([\d,]+)>(-?\d+)=", ex.prompt)
            numbers, target = m.group(1).split(","), int(m.group(2))
            assert len(numbers) == task.numbers
            assert all(1 <= int(x) <= task.max_number for x in numbers)
            assert eval(ex.answer) == target  # independent of the task's parser
            assert evaluate_expression(ex.answer) == target
            assert Counter(re.findall(r"\d+", ex.answer)) == Counter(numbers)
            assert set(re.findall(r"\D", ex.answer)) <= set(task.ops)


def test_countdown_reused_or_foreign_numbers_score_zero():
    task = CountdownTask(format_reward=FR)
    for ex in task.sample(100, 3):
        numbers, target = task.parse_prompt(ex.prompt)
        first = numbers[0]
        reuse = f"{ex.answer}+{first}-{first}"  # same value, one number used once too often
        assert eval(reuse) == target and task.reward(ex, reuse) == 0.0
        foreign = f"{ex.answer}*1" if 1 not in numbers else f"{ex.answer}+0"
        assert eval(foreign) == target and task.reward(ex, foreign) == 0.0
        assert task.reward(ex, str(target)) == (1.0 if target in numbers else 0.0)


def test_tight_length_bounds_for_addition():
    task = AdditionTask(digits=1)
    train, _ = task.splits(100, 0, seed=0)
    assert max(len(ex.prompt) for ex in train) == task.max_prompt_len == 4
    assert max(len(ex.answer) for ex in train) == task.max_answer_len == 2


@settings(max_examples=60)
@given(
    st.sampled_from(range(len(TASKS))),
    st.one_of(
        st.text(max_size=40),
        st.from_regex(r"\s*[0-9+*\-,>=()]{0,30}\s*", fullmatch=True),
        st.from_regex(r"[1-9][0-9]{0,2}([+*-][1-9][0-9]{0,2}){0,4}", fullmatch=True),
        st.sampled_from(["9" * 5000, "9" * 5000 + "*" + "9" * 5000, "\x00", "\ud800", "🙂"]),
    ),
    st.integers(0, 50),
)
def test_reward_never_raises(i, completion, seed):
    task = TASKS[i]
    ex = task.sample(1, seed)[0]
    r = task.reward(ex, completion)
    assert r in (0.0, FR, 1.0)
    assert isinstance(task.is_correct(ex, completion), bool)
    assert (r == 1.0) == task.is_correct(ex, completion)


# ---------------------------------------------------------------------------------------------
# sampling and splits


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_sample_is_deterministic_and_local(name, kwargs):
    task = make_task(name, **kwargs)
    random.seed(123)
    torch.manual_seed(123)
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    a, b = task.sample(30, seed=7), task.sample(30, seed=7)
    assert a == b
    assert task.sample(30, seed=8) != a
    assert random.getstate() == py_state and torch.equal(torch.get_rng_state(), torch_state)
    assert task.sample(0, 0) == []


@pytest.mark.parametrize(("name", "kwargs"), CONFIGS, ids=CONFIG_IDS)
def test_splits_disjoint_and_deterministic(name, kwargs):
    task = make_task(name, **kwargs)
    count = task.num_prompts or 10**9
    n_train, n_eval = min(60, count // 2), min(20, count // 4)
    train, evals = task.splits(n_train, n_eval, seed=1)
    assert (len(train), len(evals)) == (n_train, n_eval)
    prompts = [ex.prompt for ex in train + evals]
    assert len(set(prompts)) == len(prompts)
    assert not {ex.prompt for ex in train} & {ex.prompt for ex in evals}
    assert task.splits(n_train, n_eval, seed=1) == (train, evals)
    assert task.splits(n_train, n_eval, seed=2) != (train, evals)
    assert all(task.reward(ex, ex.answer) == 1.0 for ex in train + evals)


def test_splits_can_exhaust_and_refuse():
    task = AdditionTask(digits=1)
    assert task.num_prompts == 100
    train, evals = task.splits(90, 10, seed=0)
    assert {ex.prompt for ex in train + evals} == {
        f"{a}+{b}=" for a in range(10) for b in range(10)
    }
    with pytest.raises(ValueError, match="100 distinct prompts.*101"):
        task.splits(90, 11, seed=0)
    assert ReverseTask(length=2, letters="ab").num_prompts == 4
    with pytest.raises(ValueError, match="distinct prompts"):
        ReverseTask(length=2, letters="ab").splits(3, 2, seed=0)
    tiny = CountdownTask(numbers=2, max_number=1, ops="+")  # only "1,1>2="
    assert tiny.splits(1, 0, seed=0)[0] == [Example("1,1>2=", "1+1")]
    with pytest.raises(ValueError, match="distinct prompts"):
        tiny.splits(1, 1, seed=0)


# ---------------------------------------------------------------------------------------------
# batches

# ids of the addition tokenizer: "0".."9" -> 3..12, "+" -> 13, "=" -> 14


def test_encode_prompts_left_pads_by_hand():
    tok = task_tokenizer(AdditionTask())
    assert tok.alphabet == "0123456789+="
    input_ids, attention_mask = encode_prompts(tok, ["1+2=", "10+20="])
    expected = torch.tensor([[0, 0, 1, 4, 13, 5, 14], [1, 4, 3, 13, 5, 3, 14]])
    assert input_ids.dtype == attention_mask.dtype == torch.long
    assert torch.equal(input_ids, expected)
    assert torch.equal(attention_mask, torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1] * 7]))
    with pytest.raises(ValueError, match=r"prompts\[1\].*'x'"):
        encode_prompts(tok, ["1+2=", "x"])
    with pytest.raises(ValueError, match="non-empty"):
        encode_prompts(tok, [])


def test_encode_sft_masks_by_hand():
    tok = task_tokenizer(AdditionTask())
    examples = [Example("1+2=", "3"), Example("10+20=", "30")]
    input_ids, attention_mask, loss_mask = encode_sft(tok, examples)
    expected = torch.tensor([[1, 4, 13, 5, 14, 6, 2, 0, 0, 0], [1, 4, 3, 13, 5, 3, 14, 6, 3, 2]])
    assert torch.equal(input_ids, expected)
    assert torch.equal(attention_mask, torch.tensor([[1] * 7 + [0] * 3, [1] * 10]))
    t, f = True, False
    assert loss_mask.dtype == torch.bool
    assert torch.equal(
        loss_mask, torch.tensor([[f, f, f, f, f, t, t, f, f, f], [f, f, f, f, f, f, f, t, t, t]])
    )
    for row, mask, ex in zip(input_ids, loss_mask, examples, strict=True):  # targets: answer+eos
        assert row[mask].tolist() == tok.encode(ex.answer, eos=True)


def test_check_tokenizer():
    task = AdditionTask()
    check_tokenizer(task_tokenizer(task), task)
    check_tokenizer(CharTokenizer("=+9876543210xyz"), task)  # any superset in any order
    with pytest.raises(ValueError, match=r"\['\+', '='\].*addition"):
        check_tokenizer(CharTokenizer("0123456789"), task)


def test_check_context():
    task = AdditionTask(digits=2)  # 1 bos + 6 prompt ("99+99=") + 3 answer ("198") + 1 eos
    check_context(task, 11)
    with pytest.raises(ValueError, match=r"11 tokens.*context_len is 10"):
        check_context(task, 10)
    with pytest.raises(ValueError, match="context_len"):
        check_context(task, 0)


# ---------------------------------------------------------------------------------------------
# registry and arguments


def test_registry_and_make_task():
    assert LM_TASKS.names() == ["addition", "countdown", "reverse", "sort"]
    for name in LM_TASKS:
        task = make_task(name)
        assert isinstance(task, LMTask) and task.name == name and task.format_reward == 0.0
    assert make_task("sort", length=3).max_answer_len == 3
    with pytest.raises(ValueError, match="unknown task 'add'"):
        make_task("add")
    with pytest.raises(ValueError, match=r"\['digit'\].*digits"):
        make_task("addition", digit=3)


@pytest.mark.parametrize(
    ("name", "kwargs", "field"),
    [
        ("addition", {"digits": 0}, "digits"),
        ("addition", {"digits": 10}, "digits"),
        ("addition", {"digits": True}, "digits"),
        ("addition", {"digits": 2.0}, "digits"),
        ("sort", {"length": 0}, "length"),
        ("reverse", {"length": -1}, "length"),
        ("reverse", {"letters": "aab"}, "letters"),
        ("reverse", {"letters": "ab1"}, "letters"),
        ("reverse", {"letters": ""}, "letters"),
        ("countdown", {"numbers": 1}, "numbers"),
        ("countdown", {"max_number": 0}, "max_number"),
        ("countdown", {"ops": "/"}, "ops"),
        ("countdown", {"ops": "++"}, "ops"),
        ("countdown", {"ops": ""}, "ops"),
        ("addition", {"format_reward": 1.5}, "format_reward"),
        ("sort", {"format_reward": -0.1}, "format_reward"),
        ("reverse", {"format_reward": math.nan}, "format_reward"),
    ],
)
def test_bad_kwargs_name_the_field(name, kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_task(name, **kwargs)


def test_bad_sample_arguments():
    task = SortTask()
    with pytest.raises(ValueError, match="n must be"):
        task.sample(-1, 0)
    with pytest.raises(ValueError, match="seed"):
        task.sample(3, "0")
    with pytest.raises(ValueError, match="n_eval"):
        task.splits(3, -2, 0)
