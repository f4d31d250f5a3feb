"""The preference store: durability under SIGKILL, resume, export/import, statistics; terminal labelling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.labeling import label_terminal
from textgym.preferences import read_preferences, write_preferences
from textgym.store import PreferenceStore, cohens_kappa

ROOT = Path(__file__).resolve().parent.parent


def _store(tmp_path: Path, n: int = 4) -> PreferenceStore:
    store = PreferenceStore(tmp_path / "labels.db")
    store.add_pairs([(f"prompt {i}", f"a{i}", f"b{i}") for i in range(n)])
    return store


def test_a_killed_process_loses_no_committed_answer(tmp_path):
    """A child answers pairs one by one and is SIGKILLed mid-way: every answer it reported is in the store."""
    _store(tmp_path, 200).close()
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom textgym.store import PreferenceStore\n"
         "s = PreferenceStore(sys.argv[1])\n"
         "for p in s.pending('kim'):\n    s.answer(p.id, 'kim', 'a')\n    print(p.id, flush=True)\n",
         str(tmp_path / "labels.db")],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    reported = []
    for line in child.stdout:  # type: ignore[union-attr]
        reported.append(int(line))
        if len(reported) == 20:
            os.kill(child.pid, signal.SIGKILL)
            break
    child.wait()
    with PreferenceStore(tmp_path / "labels.db") as store:
        answered = {a["pair_id"] for a in store.answers()}
        assert set(reported) <= answered and len(answered) < 200
        assert len(store.pending("kim")) == 200 - len(answered)  # a new session continues with the rest


def test_answers_undo_resume_and_bad_input(tmp_path):
    store = _store(tmp_path)
    first, second = store.pending("kim")[:2]
    store.answer(first.id, "kim", "a", shown_left="b")
    store.answer(second.id, "kim", "tie")
    assert [p.id for p in store.pending("kim")] == [3, 4] and len(store.pending("lee")) == 4
    assert store.undo("kim") == second and [p.id for p in store.pending("kim")] == [2, 3, 4]
    assert store.undo("nobody") is None
    with pytest.raises(ValueError, match="'kim' has already answered pair 1"):
        store.answer(first.id, "kim", "b")
    with pytest.raises(ValueError, match="choice 'left' is not one of a, b, tie, skip"):
        store.answer(second.id, "kim", "left")
    with pytest.raises(ValueError, match="no pair 99"):
        store.answer(99, "kim", "a")
    assert store.add_pairs([("prompt 0", "a0", "b0")]) == 0  # a pair already stored is kept once
    (tmp_path / "junk.db").write_bytes(b"not a database at all, just bytes" * 10)
    with pytest.raises(ValueError, match="is not a textgym preference store"):
        PreferenceStore(tmp_path / "junk.db")


def test_export_import_round_trip(tmp_path):
    store = _store(tmp_path)
    for pair, choice in zip(store.pending("kim"), ("a", "b", "tie", "skip")):
        store.answer(pair.id, "kim", choice)
    counts = store.export(tmp_path / "prefs.jsonl")
    assert counts == {"pairs": 2, "ties": 1, "skips": 1}
    prefs = read_preferences(tmp_path / "prefs.jsonl")
    assert prefs.chosen == ["a0", "b1"] and prefs.rejected == ["b0", "a1"]
    other = PreferenceStore(tmp_path / "other.db")
    more = [{"prompt": "q", "a": "x", "b": "y"}, {"prompt": "q", "chosen": "u", "rejected": "v", "tie": True}]
    write_preferences(tmp_path / "more.jsonl", more)
    assert other.import_file(tmp_path / "prefs.jsonl") == {"pairs_added": 2, "answers_added": 2}
    assert other.import_file(tmp_path / "more.jsonl", annotator="lee") == {"pairs_added": 2, "answers_added": 1}
    assert other.import_file(tmp_path / "prefs.jsonl") == {"pairs_added": 0, "answers_added": 0}  # idempotent
    other.export(tmp_path / "again.jsonl")
    assert read_preferences(tmp_path / "again.jsonl").chosen == prefs.chosen


def test_stats_on_a_hand_made_store(tmp_path):
    store = _store(tmp_path)
    ids = [p.id for p in store.pending("kim")]
    # kim: a, a, b, tie (shown left: a, b, b, a) -> chose the left one in 2 of 3 A/B answers
    for i, choice, left in zip(ids, ("a", "a", "b", "tie"), ("a", "b", "b", "a")):
        store.answer(i, "kim", choice, shown_left=left)
    for i, choice in zip(ids, ("a", "b", "b", "tie")):
        store.answer(i, "lee", choice)
    stats = store.stats()
    assert stats["annotators"]["kim"] == {"a": 2, "b": 1, "tie": 1, "skip": 0, "position_bias": pytest.approx(2 / 3)}
    kappa, shared = stats["kappa"]["kim vs lee"]
    # agreement 3/4; chance: kim (a .5, b .25, tie .25), lee (a .25, b .5, tie .25) -> .125 + .125 + .0625 = .3125
    assert shared == 4 and kappa == pytest.approx((0.75 - 0.3125) / (1 - 0.3125))
    assert cohens_kappa(["a", "a"], ["a", "a"]) == 1.0


def test_terminal_session_answers_undoes_and_stops_at_end_of_input(tmp_path):
    store = _store(tmp_path)
    keys = iter(["1", "x", "2", "u", "t"])
    shown: list[str] = []

    def read(prompt: str) -> str:
        try:
            return next(keys)
        except StopIteration:
            raise EOFError from None

    result = label_terminal(store, "kim", read=read, write=shown.append, seed=0)
    text = "\n".join(shown)
    assert "--- pair 1 of 4 ---" in text and "prompt: prompt 0" in text and "'x' is not an answer" in text
    assert "end of input: 2 answers saved" in text and "run the same command to continue" in text
    assert result == {"answered": 2, "left": 2}
    answers = store.answers()
    assert [(a["pair_id"], a["choice"] in ("a", "b")) for a in answers] == [(1, True), (2, False)]
    assert answers[1]["choice"] == "tie"  # pair 2 was answered, undone, then called a tie
    # A new session starts where this one stopped.
    result = label_terminal(store, "kim", read=lambda _: "q", write=shown.append)
    assert result == {"answered": 0, "left": 2} and "0 answers saved" in shown[-1]


def test_cli_terminal_labelling_through_stdin(tmp_path):
    _store(tmp_path).close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "agents.cli", "label", "--store", "labels.db", "--annotator", "kim"]
    r = subprocess.run(cmd, input="a\nb\n", cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "end of input: 2 answers saved in labels.db" in r.stdout
    r = subprocess.run([*cmd, "--stats"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "labels.db: 4 pairs, 2 answers" in r.stdout and "kim: a " in r.stdout
    r = subprocess.run([*cmd, "--export", "out.jsonl"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "wrote out.jsonl: 2 preference rows; left out 0 ties and 0 skips" in r.stdout, r.stderr
    # Ctrl-C mid-session: the answers so far are kept, the message says so, exit status 130.
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=tmp_path, env=env, text=True)
    child.stdin.write("t\n")  # type: ignore[union-attr]
    child.stdin.flush()  # type: ignore[union-attr]
    deadline = time.time() + 30
    while time.time() < deadline:
        with PreferenceStore(tmp_path / "labels.db") as store:
            if store.counts()[1] == 3:
                break
        time.sleep(0.1)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 130 and "interrupted: 1 answer saved" in out
    bad = subprocess.run([sys.executable, "-m", "agents.cli", "label"], cwd=tmp_path, env=env, capture_output=True,
                         text=True)  # fmt: skip
    assert bad.returncode == 2 and "give --simulate SPEC" in bad.stderr


def test_pairs_sampled_into_the_store_from_one_or_two_checkpoints(tmp_path):
    from agents.labeling import fill_store
    from agents.pretrain import preset, pretrain
    from textgym.corpus import read_documents

    corpus = tmp_path / "small.txt"
    corpus.write_text("\n\n".join(read_documents()[1][:400]))
    for name, seed in (("m1", 0), ("m2", 1)):
        pretrain(preset("tiny", corpus=str(corpus), vocab_size=400, seed=seed, out=str(tmp_path / name),
                        progress=False, samples=0))  # fmt: skip
    m1, m2 = str(tmp_path / "m1/model"), str(tmp_path / "m2/model")
    with PreferenceStore(tmp_path / "one.db") as store:
        assert fill_store(store, m1, "", "", 5, 6, seed=0, eval_prompts=4) == 5
        pairs = store.pending("kim")
        assert all(p.source_a == p.source_b == f"{m1}@seed0" for p in pairs) and any(p.a != p.b for p in pairs)
    with PreferenceStore(tmp_path / "two.db") as store:
        assert fill_store(store, m1, m2, "", 5, 6, seed=0, eval_prompts=4) == 5
        two = store.pending("kim")
        assert [p.prompt for p in two] == [p.prompt for p in pairs]  # the same prompts, one sample of each model
        assert all(p.source_a == f"{m1}@seed0" and p.source_b == f"{m2}@seed0" for p in two)


def test_human_feedback_rates_completions_and_stores_every_rating(tmp_path):
    import gymnasium as gym

    import textgym  # noqa: F401
    from textgym.feedback import make_feedback

    answers = iter(["9", "5", "", "1", "q"])
    shown: list[str] = []
    f = make_feedback(("human", {"scale": "1-5", "store": str(tmp_path / "h.db"), "annotator": "kim",
                                 "read": lambda _: next(answers), "write": shown.append}))  # fmt: skip
    assert f(["p"] * 3, ["great", "meh", "bad"]).tolist() == [1.0, 0.0, -1.0]  # 5 -> 1, skip -> 0, 1 -> -1
    assert "'9' is not a rating: type a number from 1 to 5" in "\n".join(shown)
    assert f(["p"] * 2, ["x", "y"]).tolist() == [0.0, 0.0]  # q: the rest of the batch skipped
    with PreferenceStore(tmp_path / "h.db") as store:
        assert [(r["completion"], r["rating"]) for r in store.ratings()] == [
            ("great", 5.0), ("meh", None), ("bad", 1.0), ("x", None), ("y", None)
        ]  # fmt: skip
    assert gym.spec("textgym/HumanFeedback-v0").nondeterministic
    with pytest.raises(ValueError, match="human scale '5-1': LOW must be below HIGH"):
        make_feedback("human(scale='5-1')")

    def eof(_: str) -> str:
        raise EOFError

    with pytest.raises(KeyboardInterrupt, match="end of input"):
        make_feedback(("human", {"read": eof, "write": shown.append}))(["p"], ["c"])
