"""Fault matrix cases: bad config, data, reward functions and models."""

from __future__ import annotations

import json
import shutil
from typing import Callable

import fault_harness as H
from fault_harness import T, Workspace, case, ibtpo, out, simple


# --- config: command line ---------------------------------------------------------------------------------------
for key, fragment in [
    ("lerning_rate=1", "unknown config key 'lerning_rate'"), ("seed=abc", "seed: got 'abc'"),
    ("max_steps=-1", "max_steps: got -1"), ("epsilon=3", "epsilon: got 3"), ("loss_agg_mode=x", "loss_agg_mode"),
    ("top_p=2", "top_p: got 2"), ("temperature=0", "temperature: got 0"), ("learning_rate=-1", "learning_rate"),
    ("sampler=nope", "sampler: got 'nope'"), ("algorithm=nope", "algorithm: got 'nope'"),
    ("max_completion_length=0", "max_completion_length: got 0"), ("max_completion_length=10000", "max_completion_length"),
    ("lora_dropout=1", "lora_dropout: got 1"), ("dtype=float16", "dtype: got 'float16'"),
    ("keep_checkpoints=0", "keep_checkpoints: got 0"), ("threads=0", "threads: got 0"),
    ("format_reward_weight=1.5", "format_reward_weight: got 1.5"), ("eval_k=0", "eval_k: got 0"),
    ("scale_rewards=std", "scale_rewards"), ("questions_per_step=0", "questions_per_step: got 0"),
    ("num_generations=[2]", "num_generations: got [2]"), ("beta=-0.1", "beta: got -0.1"),
    ("tree_l=0", "tree_l: got 0"), ("ib_zero_phat=maybe", "ib_zero_phat"), ("dual_clip_c=1", "dual_clip_c: got 1"),
    ("reward_errors=ignore", "reward_errors"), ("chat_template=sometimes", "chat_template"),
    ("task_max_terms=9", "task_max_terms: got 9"), ("eval_top_p=0", "eval_top_p: got 0"),
]:
    simple("config", f"override {key}", [*T, key], fragment)
simple("config", "option without value", ["train", "--seed"], "option --seed needs a value")
simple("config", "bare word after config", ["train", "seed=1", "oops"], "cannot read argument 'oops'")
simple("config", "missing config file", ["train", "/no/such.yaml"], "config file /no/such.yaml")
simple("config", "config file is a directory", lambda ws: ["train", str(ws.path)], "config file")

# --- config: relations -----------------------------------------------------------------------------------------------
for keys, fragment in [
    (["task_min_terms=5", "task_max_terms=3"], "task_min_terms (5) must be <= task_max_terms (3)"),
    (["iib_keep=1"], "iib_keep: got 1"),
    (["iib_keep=5"], "iib_keep (5) must be <= the group size G=2"),
    (["sampler=ib", "tree_b0=2", "tree_l=3", "tree_min_room=17"], "tree_min_room (17) must be <= max_completion_length"),
    (["mini_batch_size=5"], "mini_batch_size (5) must be <= the rollout batch"),
    (["clip_cov_lb=5", "clip_cov_ub=1"], "clip_cov_lb (5.0) must be < clip_cov_ub (1.0)"),
    (["epsilon=0", "epsilon_high=0"], "epsilon and epsilon_high are both 0"),
    (["dual_clip_c=3", "epsilon=1"], "dual_clip_c (3.0) needs epsilon < 1"),
    (["device=gpu"], "device: got 'gpu'"),
    (["device=cuda"], "device='cuda'"),
    (["device=cuda:7"], "device='cuda:7'"),
    (["sampler=ib", "tree_b0=1", "tree_l=1"], "group size G=1"),
    (["num_generations=1"], "group size G=1"),
    (["sampler=fixed_width", "treepo_segment_length=20"], "treepo_segment_length (20) must be <= max_completion_length"),
    (["eval_datasets=[x.jsonl]"], "eval_datasets: set dataset= too"),
    (["max_completion_length=300"], "context window"),
]:
    simple("config", "relation " + " ".join(keys), (lambda k: lambda ws: [*T, out(ws), *k])(keys), fragment)

# --- config: YAML files ----------------------------------------------------------------------------------------------
for name, content, fragment in [
    ("non-UTF-8 bytes", b"seed: 1\nmax_steps: \xff\xfe\n", "not UTF-8 text"),
    ("Latin-1 comment", "# r\xe9glages\nseed: 1\n".encode("latin-1"), "c.yaml:1: not UTF-8"),
    ("UTF-16 file", "seed: 1\n".encode("utf-16"), "not UTF-8"),
    ("syntax error", "seed: [1\n", "invalid YAML"),
    ("tab indentation", "seed: 1\n\tmax_steps: 2\n", "invalid YAML"),
    ("a list, not a mapping", "- seed\n- 1\n", "must be a mapping"),
    ("a scalar", "hello\n", "must be a mapping"),
    ("duplicate key", "seed: 1\nmax_steps: 2\nseed: 3\n", "c.yaml:3: key 'seed' given twice (first at line 1)"),
    ("alias and name both set", "lr: 0.1\nlearning_rate: 0.2\n", "c.yaml:2: 'learning_rate' sets learning_rate"),
    ("python tag", "seed: !!python/object/apply:os.system ['true']\n", "invalid YAML"),
    ("unknown key with line", "seed: 1\n\ntemprature: 0.5\n", "c.yaml:3: unknown config key 'temprature'"),
    ("bad value with line", "seed: 1\ntop_p: 3\n", "c.yaml:2: top_p: got 3"),
    ("binary garbage", bytes(range(256)), "not UTF-8"),
    ("relation in file", "task_min_terms: 6\ntask_max_terms: 3\n", "task_min_terms (6) must be <= task_max_terms"),
]:
    simple("config", f"yaml {name}", (lambda c: lambda ws: ["train", str(ws.file("c.yaml", c)), out(ws)])(content),
           fragment)

# --- other commands ----------------------------------------------------------------------------------------------
simple("config", "compare --variants non-UTF-8", lambda ws: ["compare", "--variants", str(ws.file("v.yaml", b"a: \xff")),
                                                               "--report-only"], "not UTF-8")
simple("config", "compare --variants duplicate", lambda ws: ["compare", "--variants", str(
    ws.file("v.yaml", "a: {algorithm: grpo}\na: {algorithm: ib_tpo}\n")), "--report-only"], "key 'a' given twice")
simple("config", "compare --variants nested duplicate", lambda ws: ["compare", "--variants", str(
    ws.file("v.yaml", "a:\n  algorithm: grpo\n  algorithm: ib_tpo\n")), "--report-only"], "v.yaml:3: key 'algorithm'")
simple("config", "compare --tokens 0", ["compare", "--tokens", "0"], "--tokens: must be >= 1")
simple("config", "compare unknown preset", ["compare", "--presets", "nope"], "unknown preset 'nope'")
simple("config", "compare sets out_dir", ["compare", "out_dir=x"], "out_dir: set by compare itself")
simple("config", "pretrain unknown key", ["pretrain", "stepz=3"], "unknown pretrain key 'stepz'")
simple("config", "pretrain bad value", ["pretrain", "steps=-1"], "steps: got -1")
simple("config", "score --questions 0", lambda ws: ["score", "--questions", "0", "--out", str(ws.path / "s")],
       "--questions: must be >= 1")
simple("config", "eval --json to a directory", lambda ws: ["eval", "eval_questions=2", "eval_k=1",
                                                           "max_completion_length=4", "--json", str(ws.path)], "")

# --- data --------------------------------------------------------------------------------------------------------
GOOD_ROWS = "".join(json.dumps({"prompt": f"What is {i}+1?", "answer": str(i + 1)}) + "\n" for i in range(12))


def data_case(name: str, content: str | bytes | None, fragment: str, extra: list[str] = (), filename: str = "d.jsonl",
              expect: str = "error"):
    def args(ws: Workspace):
        path = ws.file(filename, content) if content is not None else ws.path / filename
        return [*T, out(ws), f"dataset={path}", "test_size=2", *extra]
    simple("data", name, args, fragment, expect=expect)


data_case("missing file", None, "d.jsonl")
data_case("empty file", "", "")
data_case("not JSON", "hello\nworld\n", "d.jsonl")
data_case("a list row", "[1, 2]\n" + GOOD_ROWS, "d.jsonl")
data_case("no answer column", "".join(json.dumps({"prompt": "q"}) + "\n" for _ in range(5)), "")
data_case("unknown prompt_column", GOOD_ROWS, "nope", ["prompt_column=nope"])
data_case("non-UTF-8 rows", GOOD_ROWS.encode() + b'{"prompt": "\xff", "answer": "1"}\n', "d.jsonl")
data_case("garbage parquet", b"PAR1garbage", "d.parquet", filename="d.parquet")
data_case("prompt longer than the context", json.dumps({"prompt": "x" * 8000, "answer": "1"}) + "\n" + GOOD_ROWS,
          "question", )
data_case("test_size not below rows", GOOD_ROWS, "test_size", ["test_size=50"])
data_case("chat messages with chat_template=never", "".join(json.dumps(
    {"prompt": [{"role": "user", "content": f"q{i}"}], "answer": "1"}) + "\n" for i in range(6)), "chat_template",
    ["chat_template=never"])
data_case("bad layout name", GOOD_ROWS, "dataset_layout", ["dataset_layout=nope"])
data_case("truncated last row", GOOD_ROWS + '{"prompt": "What is', "d.jsonl")
data_case("duplicate ids (renamed a#2, a#3, ... by design)",
          "".join(json.dumps({"id": "a", "prompt": f"q{i}", "answer": "1"}) + "\n" for i in range(6)), "", expect="ok")
simple("data", "eval_datasets file missing", lambda ws: [*T, out(ws), f"dataset={ws.file('d.jsonl', GOOD_ROWS)}",
                                                         f"eval_datasets=[{ws.path / 'nope.jsonl'}]"], "nope.jsonl")
simple("data", "two eval sets with one name", lambda ws: [*T, out(ws), f"dataset={ws.file('d.jsonl', GOOD_ROWS)}",
                                                          f"eval_datasets=[a={ws.file('e.jsonl', GOOD_ROWS)},"
                                                          f"a={ws.file('f.jsonl', GOOD_ROWS)}]"], "named 'a'")
simple("data", "eval: prompt longer than the context", lambda ws: [
    "eval", "eval_k=1", f"eval_datasets=[{ws.file('e.jsonl', json.dumps({'prompt': 'y' * 5000, 'answer': '1'}))}]"],
    "context window")

# --- rewards -----------------------------------------------------------------------------------------------------
REWARDS = '''
import os, sys
def exits(completions, **kw): sys.exit(3)
def exits0(completions, **kw): exit(0)
def raises(completions, **kw): raise ValueError("nope")
def short(completions, **kw): return [1.0]
def strings(completions, **kw): return ["a"] * len(completions)
def nan(completions, **kw): return [float("nan")] * len(completions)
def not_list(completions, **kw): return 3
def kbd(completions, **kw): raise KeyboardInterrupt
def none(completions, **kw): return [None] * len(completions)
NOT_CALLABLE = 3
'''


def reward_case(name: str, spec: str, fragment: str, expect: str = "error", extra: list[str] = ()):
    def args(ws: Workspace):
        ws.file("myrewards.py", REWARDS)
        s = spec.replace("FILE", str(ws.path / "myrewards.py"))
        return [*T, out(ws), f"reward_fn={s}", *extra]
    simple("rewards", name, args, fragment, expect=expect)


reward_case("module not found", "no_such_module:fn", "no_such_module")
reward_case("function not in file", "FILE:missing", "no attribute 'missing'")
reward_case("not callable", "FILE:NOT_CALLABLE", "not callable")
reward_case("calls sys.exit(3)", "FILE:exits", "called exit(3)")
reward_case("calls exit(0)", "FILE:exits0", "called exit(0)")
reward_case("raises", "FILE:raises", "nope")
reward_case("one score too few", "FILE:short", "")
reward_case("strings", "FILE:strings", "")
reward_case("NaN scores", "FILE:nan", "")
reward_case("not a list", "FILE:not_list", "")
reward_case("raises with reward_errors=zero", "FILE:raises", "", expect="ok", extra=["reward_errors=zero"])
reward_case("all None (unscorable)", "FILE:none", "", expect="ok")
reward_case("unknown registered name", "nope", "unknown reward function 'nope'")


@case("rewards", "file with a syntax error", fragment="bad.py")
def _syntax(ws: Workspace):
    ws.file("bad.py", "def fn(:\n")
    return ibtpo([*T, out(ws), f"reward_fn={ws.path / 'bad.py'}:fn"], cwd=ws.path), None

# --- models ------------------------------------------------------------------------------------------------------


def model_case(name: str, make: Callable[[Workspace], str], fragment: str, extra: list[str] = ()):
    simple("models", name, lambda ws: [*T, out(ws), f"model={make(ws)}", *extra], fragment)


def _copy_model(ws: Workspace, drop: str = "", garble: str = "", truncate: str = "") -> str:
    src = H.BASE / "checkpoints" / "step-000002"
    dst = ws.path / "model"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("trainer_state.pt", "manifest.json"))
    if drop:
        (dst / drop).unlink()
    if garble:
        (dst / garble).write_bytes(b"\x00garbage{")
    if truncate:
        data = (dst / truncate).read_bytes()
        (dst / truncate).write_bytes(data[: len(data) // 3])
    return str(dst)


model_case("path missing", lambda ws: "/no/such/model", "model path not found")
model_case("directory without config.json", lambda ws: str(ws.path), "no config.json")
model_case("garbage config.json", lambda ws: _copy_model(ws, garble="config.json"), "")
model_case("weights missing", lambda ws: _copy_model(ws, drop="model.safetensors"), "")
model_case("weights truncated", lambda ws: _copy_model(ws, truncate="model.safetensors"), "")
model_case("weights garbage", lambda ws: _copy_model(ws, garble="model.safetensors"), "")
model_case("tokenizer missing", lambda ws: _copy_model(ws, drop="tokenizer.json"), "")
model_case("hub id not cached", lambda ws: "someone/not-cached-model", "")
model_case("a file, not a directory", lambda ws: str(ws.file("m.bin", b"x")), "")
model_case("lora targets that do not exist", lambda ws: "testbed", "lora_target_modules", ["lora_rank=2",
                                                                                          "lora_target_modules=[nope]"])
simple("models", "eval: run directory with no checkpoint", lambda ws: ["eval", f"model={ws.path}",
                                                                       "eval_questions=2"], "",
       setup=lambda ws: (ws.path / "checkpoints").mkdir())
