import asyncio
import itertools
import math
import re

import pytest

import agentrl
from agentrl.environments import codebreaker
from agentrl.environments.codebreaker import parse_guess, score_guess
from agentrl.envs.core import ResetNeeded
from agentrl.envs.tasks import check_disjoint

_CLUE = re.compile(r"(\d+) -> (\d+) correct digits? in the correct place, (\d+) correct in a wrong place")


def codes(length):
    return ["".join(p) for p in itertools.permutations("0123456789", length)]


def play(env, task_id, choose):
    """Drive one episode; ``choose(history, candidates_left_by_observation)`` returns the action text.

    The policy sees only the messages: it reads the opening clue and every feedback line with a regex
    and keeps the codes consistent with all of them.
    """
    obs, info = env.reset(options={"task_id": task_id})
    length = info["metadata"]["length"]
    possible = codes(length)
    history = []
    total, steps = 0.0, []
    while True:
        for m in obs:
            for guess, exact, misplaced in _CLUE.findall(m["content"]):
                fb = (int(exact), int(misplaced))
                history.append((guess, fb))
                possible = [c for c in possible if score_guess(c, guess) == fb]
        obs, reward, term, trunc, info = env.step(choose(history, possible))
        total += reward
        steps.append((obs, reward, term, trunc, info))
        if term or trunc:
            return total, steps


def consistent_solver(history, possible):
    return f"<think>{len(possible)} codes fit.</think>\nMy guess: <guess>{possible[0]}</guess>"


def test_passes_check_env():
    assert agentrl.check_env(agentrl.make("codebreaker")) == []
    assert agentrl.check_env(agentrl.make("codebreaker", split="test", length=4, max_guesses=3)) == []


def test_splits_are_disjoint_by_id_content_and_clue():
    splits = codebreaker.splits()
    check_disjoint(splits)
    train, test = splits["train"], splits["test"]
    assert len({t.id for t in train}) == 1000 and len({t.id for t in test}) == 200
    assert not {t.id for t in train} & {t.id for t in test}
    assert not {t.content_hash for t in train} & {t.content_hash for t in test}
    clue = lambda t: (t.metadata["opener"], tuple(t.metadata["opener_feedback"]))  # noqa: E731
    assert not {clue(t) for t in train} & {clue(t) for t in test}
    # Many different puzzles, not a handful of prompts repeated.
    assert len({t.prompt for t in test}) > 100


def test_tasks_are_deterministic_prefix_stable_and_hide_the_secret():
    a = codebreaker.make_tasks("test", 50)
    b = codebreaker.make_tasks("test", 120)
    assert [(t.id, t.answer, t.prompt) for t in a] == [(t.id, t.answer, t.prompt) for t in b[:50]]
    for t in b:
        exact, misplaced = t.metadata["opener_feedback"]
        assert score_guess(t.answer, t.metadata["opener"]) == (exact, misplaced) and exact < 3
        assert t.answer not in t.prompt and t.answer not in repr(t.metadata)


def test_consistent_solver_cracks_every_test_code_and_returns_more_than_one():
    env = agentrl.make("codebreaker", split="test")
    for task_id in env.task_ids:
        total, steps = play(env, task_id, consistent_solver)
        obs, reward, term, trunc, info = steps[-1]
        comps = info["reward_components"]
        assert (term, trunc, obs) == (True, False, [])
        assert comps["success"] == 1.0 and comps["reward"] == pytest.approx(reward) and reward >= 1.0
        assert total > 1.0 and total == pytest.approx(1.0 + codebreaker.SHAPING_SCALE)
        assert comps["episode_return"] == pytest.approx(total)
        assert comps["guesses"] == len(steps) <= 8 and comps["invalid_guesses"] == 0.0
        # Every non-final step answered with one user message carrying the feedback and the budget.
        for i, (o, *_rest) in enumerate(steps[:-1], start=1):
            assert [m["role"] for m in o] == ["user"] and f"{8 - i} guess" in o[0]["content"]


def test_repeating_one_wrong_guess_loses_with_a_non_positive_return():
    env = agentrl.make("codebreaker", split="test")
    for task in env.unwrapped.tasks[:20]:
        wrong = next(c for c in codes(3) if c != task.answer)
        total, steps = play(env, task.id, lambda h, p, w=wrong: f"<guess>{w}</guess>")
        obs, _, term, trunc, info = steps[-1]
        comps = info["reward_components"]
        assert len(steps) == 8 and (term, trunc, obs) == (True, False, [])
        assert comps["success"] == 0.0 and comps["repeated_guesses"] == 7.0
        assert total <= 0.0 and comps["episode_return"] == pytest.approx(total)
        assert comps["penalty_total"] <= codebreaker.PENALTY_CAP + 1e-12


def near_miss(history, possible, secret):
    """Plays consistently but never says the secret: the most shaping a losing game can collect."""
    others = [c for c in possible if c != secret]
    return f"<guess>{others[0]}</guess>" if others else "I give up."


def test_every_solved_episode_returns_more_than_every_lost_one():
    # A generous budget, so that a solver can afford six junk turns (and the penalty cap) and still win.
    env = agentrl.make("codebreaker", split="test", max_guesses=14, max_turns=None)
    for task in env.unwrapped.tasks[:25]:
        secret = task.answer
        won, lost = [], []
        total, steps = play(env, task.id, consistent_solver)
        won.append(total)
        # Six turns of junk first (invalid, the opener again, or codes the clue rules out), then solve.
        opener, fb = task.metadata["opener"], tuple(task.metadata["opener_feedback"])
        ruled_out = [c for c in codes(3) if score_guess(c, opener) != fb and c != secret]
        for junk in (
            lambda i: "no idea",
            lambda i, o=opener: f"<guess>{o}</guess>",
            lambda i, r=ruled_out: f"<guess>{r[i]}</guess>",
        ):
            n = [0]

            def policy(h, p, junk=junk, n=n):
                n[0] += 1
                return junk(n[0]) if n[0] <= 6 else f"<guess>{p[0]}</guess>"

            total, steps = play(env, task.id, policy)
            assert steps[-1][4]["reward_components"]["success"] == 1.0
            won.append(total)
        total, steps = play(env, task.id, lambda h, p, s=secret: near_miss(h, p, s))
        assert steps[-1][4]["reward_components"]["success"] == 0.0
        lost.append(total)
        total, _ = play(env, task.id, lambda h, p: "")
        lost.append(total)
        assert min(won) > max(lost), (task.id, won, lost)
        assert min(won) >= 1.0 - codebreaker.PENALTY_CAP - 1e-9
        assert max(lost) <= codebreaker.SHAPING_SCALE + 1e-9


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("", "could not find a guess"),
        ("Let me think about it.", "could not find a guess"),
        ("<guess>12</guess>", "has 2 digits"),
        ("<guess>1234</guess>", "has 4 digits"),
        ("<guess>112</guess>", "repeats a digit"),
        ("<guess>abc</guess>", "only the digits"),
        ("<guess></guess>", "empty"),
        ("<think>It might be 123.</think> Not sure yet.", "could not find a guess"),
        ("<think>unclosed reasoning 456", "could not find a guess"),
        ("I pick 98765432", "has 8 digits"),
        ({"role": "assistant", "content": None}, "could not find a guess"),
    ],
)
def test_invalid_guesses_get_an_explanation_and_a_penalty(action, expected):
    env = agentrl.make("codebreaker")
    env.reset(seed=0)
    obs, reward, term, trunc, info = env.step(action)
    assert (term, trunc) == (False, False)
    assert len(obs) == 1 and obs[0]["role"] == "user"
    assert expected in obs[0]["content"] and "<guess>123</guess>" in obs[0]["content"]
    assert "7 guesses left" in obs[0]["content"]
    assert reward == pytest.approx(-codebreaker.INVALID_PENALTY)
    assert info["feedback"] == {"guess": None, "kind": "invalid"}
    assert info["reward_components"]["invalid_guesses"] == 1.0


def test_penalties_are_capped_and_running_out_of_guesses_terminates():
    env = agentrl.make("codebreaker", max_guesses=8)
    env.reset(seed=3)
    rewards = []
    for _ in range(8):
        obs, reward, term, trunc, info = env.step("hmm")
        rewards.append(reward)
    assert (obs, term, trunc) == ([], True, False)
    assert sum(rewards) == pytest.approx(-codebreaker.PENALTY_CAP)
    assert rewards[-1] == 0.0  # the cap was reached earlier
    comps = info["reward_components"]
    assert comps["success"] == 0.0 and comps["invalid_guesses"] == 8.0 and comps["guesses"] == 8.0
    assert "not counted" in info["final_message"]
    with pytest.raises(ResetNeeded):
        env.step("<guess>123</guess>")


@pytest.mark.parametrize(
    ("text", "guess"),
    [
        ("<guess>012</guess>", "012"),
        ("first <guess>345</guess> no wait <guess>678</guess>", "678"),
        ("<GUESS> 9 8 7 </GUESS>", "987"),
        ("<guess>1,2,3</guess>", "123"),
        ("\\boxed{406}", "406"),
        ("After 123 and 456 I'll try 789.", "789"),
        ("Try 789, then 12 later", "789"),
        ("<think>maybe 111 or 222</think>My guess is 504", "504"),
        ("reasoning the template opened 333</think> so: 861", "861"),
        ("<guess>123</guess> since 456 failed", "123"),  # an explicit tag beats a later number
    ],
)
def test_guess_parsing_is_tolerant(text, guess):
    assert parse_guess(text, 3) == (guess, None)


def test_guess_parsing_ignores_non_ascii_digits():
    assert parse_guess("١٢٣", 3)[0] is None
    assert parse_guess("<guess>１２３</guess>", 3)[0] is None


def test_structured_actions_and_astep():
    env = agentrl.make("codebreaker", split="test")
    env.reset(seed=1)
    parts = {"role": "assistant", "content": [{"type": "text", "text": "<guess>"}, {"type": "text", "text": "147"}]}
    obs, _, _, _, info = env.step(parts)
    assert info["feedback"]["guess"] == "147" and "147 ->" in obs[0]["content"]
    obs, _, _, _, info = asyncio.run(env.astep("<guess>258</guess>"))
    assert info["feedback"]["guess"] == "258" and "6 guesses left" in obs[0]["content"]
    assert [m["role"] for m in env.unwrapped.episode_messages] == ["assistant", "user", "assistant", "user"]


def test_information_shaping_and_inconsistent_guess_penalty():
    env = agentrl.make("codebreaker", split="test").unwrapped
    task = next(t for t in env.tasks if t.metadata["opener_feedback"] == [0, 0])
    env.reset(options={"task_id": task.id})
    opener = task.metadata["opener"]
    start = len(env.candidates)
    # A code sharing a digit with the opener is ruled out by "0 right digits": an inconsistent guess.
    bad = next(c for c in codes(3) if c[0] == opener[0] and c != task.answer)
    obs, reward, _, _, info = env.step(f"<guess>{bad}</guess>")
    assert info["feedback"]["kind"] == "inconsistent" and "ruled this code out" in obs[0]["content"]
    after = len(env.candidates)
    gain = codebreaker.SHAPING_SCALE * (math.log(start) - math.log(after)) / math.log(start)
    assert reward == pytest.approx(gain - codebreaker.INCONSISTENT_PENALTY)
    assert info["reward_components"]["inconsistent_guesses"] == 1.0
    # A repeated guess gains nothing and costs the invalid penalty.
    _, reward, _, _, info = env.step(f"<guess>{bad}</guess>")
    assert info["feedback"]["kind"] == "repeated" and reward == pytest.approx(-codebreaker.INVALID_PENALTY)


def test_episodes_are_deterministic_given_the_seed():
    def run(seed):
        env = agentrl.make("codebreaker", split="test")
        obs, info = env.reset(seed=seed)
        out = [obs, info["task_id"]]
        for g in ["<guess>123</guess>", "<guess>456</guess>", "oops", "<guess>789</guess>"]:
            step = env.step(g)
            out.append(step[:4])
            if step[2]:
                break
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_turn_limit_truncates_and_still_reports_failure():
    env = agentrl.make("codebreaker", max_turns=2)
    env.reset(seed=0)
    env.step("<guess>123</guess>")
    _, _, term, trunc, info = env.step("<guess>456</guess>")
    assert (term, trunc) == (False, True) and info["truncated_by"] == "max_turns"
    assert info["reward_components"]["success"] == 0.0


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="split"):
        agentrl.make("codebreaker", split="validation")
    with pytest.raises(ValueError, match="length"):
        agentrl.make("codebreaker", length=9)
    with pytest.raises(ValueError, match="max_guesses"):
        agentrl.make("codebreaker", max_guesses=0)
    with pytest.raises(KeyError):
        agentrl.make("codebreaker").reset(options={"task_id": "nope"})


def test_other_lengths_work_and_length_two_has_no_giveaway_clues():
    for t in codebreaker.make_tasks("train", 300, length=2):
        assert t.metadata["opener_feedback"] != [0, 2]
    env = agentrl.make("codebreaker", split="test", length=4, num_tasks=10)
    for task_id in env.task_ids:
        total, steps = play(env, task_id, consistent_solver)
        assert steps[-1][4]["reward_components"]["success"] == 1.0 and total > 1.0
