"""The feedback registry: specs, wrapping, validation, built-ins and third-party entry points."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from textgym.feedback import available_feedback, make_feedback, parse_spec, register_feedback


def test_builtins_are_registered():
    assert {"sentiment", "length", "keywords", "repetition"} <= set(available_feedback())


def test_sentiment_is_real_vader():
    f = make_feedback("sentiment")
    s = f(["", "", ""], ["What a wonderful, happy day!", "This is awful and I hate it.", "The table is brown."])
    assert s[0] > 0.5 and s[1] < -0.5 and abs(s[2]) < 0.1


def test_length_keywords_repetition():
    assert make_feedback("length(target=4)")(["p"] * 3, ["a b c d", "a b", ""]).tolist() == [1.0, 0.5, 0.0]
    kw = make_feedback("keywords(words=love|joy)")
    assert kw(["p"] * 3, ["Love and JOY!", "my love", "nothing"]).tolist() == [1.0, 0.5, 0.0]
    rep = make_feedback("repetition(n=2)")
    vals = rep(["p"] * 2, ["one two three four", "go go go go go"])
    assert vals[0] == 0.0 and vals[1] == pytest.approx(-0.75)


def test_weighted_mix_by_string_and_dict_report_components():
    a = make_feedback("sentiment + 0.5*length(target=2)")
    b = make_feedback({"sentiment": 1.0, "length": {"weight": 0.5, "target": 2}})
    prompts, comps = ["x", "y"], ["I love it", "bad bad"]
    ta, pa = a.evaluate(prompts, comps)
    tb, pb = b.evaluate(prompts, comps)
    assert np.allclose(ta, tb) and set(pa) == {"sentiment", "length"}
    assert np.allclose(ta, pa["sentiment"] + 0.5 * pa["length"])


def test_plain_and_batched_callables():
    plain = make_feedback(lambda prompt, completion: float(len(completion)))
    assert plain(["a", "b"], ["xyz", ""]).tolist() == [3.0, 0.0]

    class Batched:
        def __call__(self, prompts, completions, **kwargs):
            return np.array([len(p) for p in prompts], dtype=float)

    assert make_feedback(Batched())(["ab", "c"], ["", ""]).tolist() == [2.0, 1.0]


def test_keyword_arguments_reach_callables_that_name_them():
    """References reach a batched feedback that takes **kwargs or names the argument; others are called without."""
    seen = {}

    def named(prompts, completions, references):
        seen["named"] = references
        return np.zeros(len(completions))

    def keyword_only(prompts, completions, *, references=None, other=None):
        seen["keyword_only"] = (references, other)
        return np.zeros(len(completions))

    def plain(prompts, completions):
        return np.ones(len(completions))

    for fn in (named, keyword_only, plain):
        make_feedback(fn)(["p"], ["c"], references=["r"], unrelated=1)
    assert seen == {"named": ["r"], "keyword_only": (["r"], None)}


def test_unknown_name_lists_known_ones():
    with pytest.raises(KeyError, match=r"unknown feedback 'sentimnt'; known feedback: .*keywords.*sentiment"):
        make_feedback("sentimnt")


def test_wrong_count_and_nan_are_errors():
    f = make_feedback(_named("short", lambda prompts, completions, **k: np.zeros(1)))
    with pytest.raises(ValueError, match=r"feedback 'short' returned 1 values for 2 completions"):
        f(["a", "b"], ["c", "d"])
    f = make_feedback(_named("nanny", lambda prompts, completions, **k: np.array([0.0, np.nan])))
    with pytest.raises(ValueError, match=r"feedback 'nanny' returned nan for completion 1 \('d'\)"):
        f(["a", "b"], ["c", "d"])
    f = make_feedback(_named("infinite", lambda prompts, completions, **k: np.array([-np.inf, 1.0])))
    with pytest.raises(ValueError, match=r"feedback 'infinite' returned -inf for completion 0 \('c'\)"):
        f(["a", "b"], ["c", "d"])
    huge = make_feedback(_named("huge", lambda prompts, completions, **k: np.array([1e200, -1e200])))
    assert list(huge(["a", "b"], ["c", "d"])) == [1e200, -1e200]  # large but finite is fine


def _named(name, fn):
    fn.__name__ = name
    return fn


def test_bad_specs():
    with pytest.raises(ValueError, match="cannot parse feedback spec"):
        parse_spec("sentiment + 2**x")
    with pytest.raises(ValueError, match="needs words"):
        make_feedback("keywords")
    with pytest.raises(
        ValueError,
        match=r"bad arguments \{'tgt': 5\} for feedback 'length': no argument 'tgt'; "
        r"its arguments: target",
    ):
        make_feedback("length(tgt=5)")
    with pytest.raises(TypeError, match="cannot make feedback from int"):
        make_feedback(3)


def test_register_in_process():
    @register_feedback("test-shout")
    def make_shout(threshold: float = 0.5):
        def shout(prompts, completions, **kwargs):
            return np.array([float(sum(ch.isupper() for ch in c) > threshold * max(len(c), 1)) for c in completions])

        return shout

    assert make_feedback("test-shout")(["", ""], ["HEY", "hey"]).tolist() == [1.0, 0.0]


def test_third_party_entry_point(tmp_path):
    """A package registers feedback through the `textgym.rewards` entry-point group, without touching textgym."""
    (tmp_path / "tg_plugin.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            def make_exclaim(bonus=1.0):
                def exclaim(prompts, completions, **kwargs):
                    return np.array([bonus * c.count("!") for c in completions], dtype=float)
                return exclaim
            """
        )
    )
    dist = tmp_path / "tg_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tg-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[textgym.rewards]\nexclaim = tg_plugin:make_exclaim\n")
    code = (
        "import textgym; from textgym.feedback import make_feedback, available_feedback;"
        "assert 'exclaim' in available_feedback();"
        "print(make_feedback('exclaim(bonus=2)')(['p'], ['wow!!']).tolist())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[4.0]"


def test_quoted_arguments_keep_separators():
    terms = parse_spec('sentiment + 0.5*reward-model(path="runs/rm v2+x, (a)|b") + keywords(words=a|b)')
    assert terms == [
        ("sentiment", 1.0, {}),
        ("reward-model", 0.5, {"path": "runs/rm v2+x, (a)|b"}),
        ("keywords", 1.0, {"words": ["a", "b"]}),
    ]
    assert parse_spec("length(target='12')") == [("length", 1.0, {"target": "12"})]  # quoted: a string, as written
    with pytest.raises(ValueError, match="unclosed quote"):
        parse_spec('fluency(path="runs/a)')


def test_reference_metrics():
    f = make_feedback("bleu + chrf + rouge + distinct")
    refs = ["the cat sat on the mat", "the cat sat on the mat"]
    total, parts = f.evaluate(["p", "p"], ["the cat sat on the mat", "dogs run fast"], references=refs)
    for name in ("bleu", "chrf", "rouge"):
        assert parts[name][0] == pytest.approx(1.0) and parts[name][1] < 0.15, (name, parts[name])
    assert parts["rouge"][1] == 0.0
    assert parts["distinct"].tolist() == [1.0, 1.0]
    assert make_feedback("distinct(n=1)")(["p"], ["a a b b"]).tolist() == [0.5]
    assert set(make_feedback("bleu+chrf+rouge+sentiment").needs_references) == {"bleu", "chrf", "rouge"}
    with pytest.raises(ValueError, match="'chrf' compares each completion with its prompt's reference"):
        make_feedback("chrf")(["p"], ["text"])


def test_a_reference_metric_on_prompts_without_references_names_the_file(tmp_path):
    import gymnasium as gym

    import textgym  # noqa: F401

    prompts = tmp_path / "no_refs.jsonl"
    prompts.write_text('{"prompt": "Once upon"}\n{"prompt": "The sea"}\n')
    with pytest.raises(
        ValueError, match=r"feedback 'rouge' compares .* but the prompt file '.*no_refs.jsonl' has none"
    ):
        gym.make("textgym/TextGen-v0", reward="sentiment+rouge", prompts=str(prompts))
    env = gym.make("textgym/TextGen-v0", reward="chrf")  # the corpus's own prompts carry their continuations
    env.reset(seed=0)
    assert env.unwrapped.task.prompts.references is not None


def test_learned_feedback_comes_through_entry_points():
    assert {"fluency", "reward-model", "bleu", "chrf", "rouge", "distinct"} <= set(available_feedback())
    with pytest.raises(ValueError, match="needs the path of a language model"):
        make_feedback("fluency")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_feedback('reward-model(path="no/such dir")')
