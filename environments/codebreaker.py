"""``codebreaker``: a Mastermind-like game where every guess is answered with feedback.

The environment holds a secret code of ``length`` different digits (0-9, a leading 0 allowed). Each
assistant turn is one guess; the environment answers with a ``user`` message saying how many digits
are right and in the right place, how many are in the code but misplaced, and how many guesses are
left. The episode ends when the code is cracked (success) or the ``max_guesses`` budget is spent
(a lost game: ``terminated``, not ``truncated``, because the game itself ended). It is not a
``ToolEnv``: there are no tools, the feedback is the environment's side of a conversation.

Reading a guess
    Only the visible part of a turn counts (reasoning inside ``<think>`` is ignored). The guess is
    the last ``<guess>...</guess>`` tag (``\\boxed{...}`` is accepted as well; spaces, commas and
    dashes between digits are dropped). Without a tag, it is the last standalone run of exactly
    ``length`` digits. A turn with no guess, a guess of the wrong length, non-digits or a repeated
    digit is *invalid*: it is answered with a message that explains the problem, consumes one guess
    and is penalised. Nothing the model writes raises.

Rewards (each step returns its own; the episode return is their sum)
    * Terminal: 1.0 on the step that cracks the code, 0.0 when the guesses run out.
    * Information shaping, potential-based: with ``N`` the number of codes still consistent with all
      feedback (``N0`` after the opening clue), ``phi = 0.2 * (1 - ln N / ln N0)`` and each step earns
      ``phi(after) - phi(before)``: 0.2 times the share of the clue's uncertainty, in bits, that the guess
      removed. An informative guess is rewarded at once, long before the code is found, which gives a
      learning signal on games that are lost. Because it telescopes, the shaping of a whole episode is
      ``phi(end)``: at most 0.2 (exactly 0.2 when the code is cracked) however long the game, so it
      cannot be farmed by playing on, and a guess that teaches nothing earns nothing.
    * Penalties: 0.05 for an invalid guess or one already made (including the opening clue), 0.02 for a
      guess that contradicts earlier feedback (it could not be the code; careful play never does this).
      Penalties stop accruing at 0.25 per episode.
    Hence a solved episode returns between 0.95 and 1.2 and a lost one between -0.25 and 0.2: solving
    always beats not solving, and among solved games, clean informative play scores highest.

Tasks and splits
    A task is a secret code. Since the prompt cannot reveal the secret, prompts would all look the same
    and "held-out" would mean nothing. So each task opens with a clue: a first guess already made, drawn
    per task, with its true feedback. The clue (opening guess and feedback) decides the split through
    a hash, so tasks with the same visible prompt always land in the same split, and the splits are
    disjoint by content; ids hash the clue and the secret, so they are disjoint by id too. Several
    secrets can share a clue: from the model's point of view they are the same puzzle, which is what
    the game is, since the clue leaves several codes possible. Tasks come from a fixed seed.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from agentrl.chat.parsing import split_reasoning
from agentrl.envs.core import Action, Env, Message, ResetNeeded, StepResult
from agentrl.envs.tasks import Task, check_disjoint, index_tasks, select_task

SYSTEM_PROMPT = (
    "You are playing a code-breaking game. After every guess you are told how many digits are correct and "
    "in the correct place, and how many are in the code but in a wrong place. Work out which codes are still "
    "possible given all the feedback so far, then end your reply with exactly one guess written as "
    "<guess>DIGITS</guess>."
)
_TASK_SEED = 20240717  # fixed: the task set is part of the environment's definition
_TEST_SHARE = 5  # one opening clue in five goes to the test split
DIGITS = "0123456789"
MIN_LENGTH, MAX_LENGTH = 2, 6  # 6 digits is already 151,200 codes to track per episode

SHAPING_SCALE = 0.2  # the whole information shaping of an episode, from the clue to a single code left
INVALID_PENALTY = 0.05  # no parsable guess, wrong length, repeated digit, or a guess already made
INCONSISTENT_PENALTY = 0.02  # a valid new guess that earlier feedback already rules out
PENALTY_CAP = 0.25  # per episode; keeps every solved return above every lost one

_MARKER = re.compile(r"<guess>(.*?)</guess>|\\boxed\{([^{}]*)\}", re.IGNORECASE | re.DOTALL)
_DIGIT_RUN = re.compile(r"(?<![0-9])[0-9]+(?![0-9])")  # ASCII only: \d also matches other scripts' digits
_SEPARATORS = re.compile(r"[\s,\-]+")


def score_guess(secret: str, guess: str) -> tuple[int, int]:
    """(digits in the right place, digits in the code but misplaced) for codes of distinct digits."""
    exact = sum(a == b for a, b in zip(secret, guess, strict=True))
    return exact, len(set(secret) & set(guess)) - exact


@lru_cache(maxsize=MAX_LENGTH + 1)
def all_codes(length: int) -> tuple[str, ...]:
    """Every code of ``length`` distinct digits, in lexicographic order."""
    return tuple("".join(p) for p in itertools.permutations(DIGITS, length))


def consistent(codes: Sequence[str], guess: str, feedback: tuple[int, int]) -> list[str]:
    """The codes that would have answered ``guess`` with ``feedback``."""
    return [c for c in codes if score_guess(c, guess) == feedback]


def describe(exact: int, misplaced: int) -> str:
    place = "digit" if exact == 1 else "digits"
    return f"{exact} correct {place} in the correct place, {misplaced} correct in a wrong place"


def parse_guess(text: str, length: int) -> tuple[str | None, str | None]:
    """``(guess, None)`` for a well-formed guess, else ``(None, why)`` with an explanation for the model."""
    return _parse_visible(split_reasoning(text)[1], length)


def _parse_visible(visible: str, length: int) -> tuple[str | None, str | None]:
    example = DIGITS[1 : length + 1]
    how = f"End your reply with one guess of {length} different digits, like <guess>{example}</guess>."
    markers = _MARKER.findall(visible)
    if markers:
        tagged, boxed = markers[-1]
        raw = tagged if tagged or not boxed else boxed
        candidate = _SEPARATORS.sub("", raw)
        if not candidate:
            return None, f"Your guess tag was empty. {how}"
        if not candidate.isdigit() or not candidate.isascii():
            return None, f"Your guess {raw.strip()[:40]!r} must contain only the digits 0-9. {how}"
    else:
        runs = _DIGIT_RUN.findall(visible)
        fitting = [r for r in runs if len(r) == length]
        if fitting:
            candidate = fitting[-1]
        elif runs:
            candidate = runs[-1]
        else:
            return None, f"I could not find a guess in your reply. {how}"
    if len(candidate) != length:
        shown = candidate if len(candidate) <= 20 else candidate[:20] + "..."
        return None, f"Your guess {shown} has {len(candidate)} digits, but the code has {length}. {how}"
    if len(set(candidate)) != length:
        return None, f"Your guess {candidate} repeats a digit, but the code's digits are all different. {how}"
    return candidate, None


def _prompt(length: int, max_guesses: int, opener: str, exact: int, misplaced: int) -> str:
    plural = "guess" if max_guesses == 1 else "guesses"
    return (
        f"I have picked a secret code of {length} different digits (0-9; it may start with 0). "
        f"Find it in at most {max_guesses} {plural}. After each guess I will tell you how many digits are "
        "correct and in the correct place, and how many are in the code but in a wrong place.\n\n"
        f"A first guess has already been made for you: {opener} -> {describe(exact, misplaced)}.\n\n"
        f"Reply with your next guess as <guess>{DIGITS[1 : length + 1]}</guess>."
    )


def _check_params(length: int, max_guesses: int) -> None:
    if not MIN_LENGTH <= length <= MAX_LENGTH:
        raise ValueError(f"length must be between {MIN_LENGTH} and {MAX_LENGTH}, got {length}")
    if max_guesses < 1:
        raise ValueError(f"max_guesses must be >= 1, got {max_guesses}")


def make_tasks(split: str, n: int, *, length: int = 3, max_guesses: int = 8) -> list[Task]:
    """The first ``n`` tasks of ``split`` ("train" or "test"); each is a secret plus an opening clue."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    _check_params(length, max_guesses)
    rng = random.Random(f"{_TASK_SEED}-{length}")  # max_guesses only changes wording, not the draws
    seen: set[str] = set()
    out: list[Task] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"cannot generate {n} distinct {split} tasks with length={length}")
        secret = "".join(rng.sample(DIGITS, length))
        opener = "".join(rng.sample(DIGITS, length))
        exact, misplaced = score_guess(secret, opener)
        # A clue that gives the answer away is no puzzle: the code itself, or (length 2 only) its two
        # digits swapped, the one clue that leaves a single code possible.
        if exact == length or (length == 2 and misplaced == 2):
            continue
        # The split follows the visible clue only, so equal prompts can never straddle the splits.
        clue = f"{length}|{opener}|{exact}|{misplaced}"
        clue_hash = hashlib.sha256(clue.encode()).hexdigest()
        if (int(clue_hash[:8], 16) % _TEST_SHARE == 0) != (split == "test"):
            continue
        task_id = "code-" + hashlib.sha256(f"{clue}|{secret}".encode()).hexdigest()[:12]
        if task_id in seen:
            continue
        seen.add(task_id)
        out.append(
            Task(
                id=task_id,
                prompt=_prompt(length, max_guesses, opener, exact, misplaced),
                answer=secret,
                # What the policy already sees; never the secret (metadata is logged and returned by reset).
                metadata={"length": length, "opener": opener, "opener_feedback": [exact, misplaced]},
            )
        )
    return out


class CodebreakerEnv(Env):
    """Crack a secret code of distinct digits from right-place / wrong-place feedback; shaped rewards."""

    system_prompt: str | None = SYSTEM_PROMPT

    def __init__(
        self,
        split: str = "train",
        num_tasks: int | None = None,
        length: int = 3,
        max_guesses: int = 8,
        system_prompt: str | None = None,
    ):
        n = num_tasks if num_tasks is not None else (1000 if split == "train" else 200)
        if n < 1:
            raise ValueError(f"num_tasks must be >= 1, got {n}")
        self.tasks = make_tasks(split, n, length=length, max_guesses=max_guesses)
        self._tasks_by_id = index_tasks(self.tasks)
        if system_prompt is not None:
            self.system_prompt = system_prompt
        self.split = split
        self.length = length
        self.max_guesses = max_guesses
        self.task: Task | None = None
        self.messages: list[Message] = []
        self.prompt_length = 0
        self._active = False
        self._start_episode_state([])

    def _start_episode_state(self, candidates: list[str]) -> None:
        self.candidates = candidates  # codes consistent with every piece of feedback so far
        self._initial_candidates = max(len(candidates), 1)
        self.guesses: list[str | None] = []  # one entry per turn; None for an invalid turn
        self._seen: set[str] = set()
        self.shaping_total = 0.0
        self.penalty_total = 0.0
        self.episode_return = 0.0
        self.counts = {"invalid": 0, "repeated": 0, "inconsistent": 0}

    # ----- the API -----------------------------------------------------------------------
    @property
    def task_ids(self) -> list[str]:
        return [t.id for t in self.tasks]

    @property
    def episode_messages(self) -> list[Message]:
        """The messages of this episode after its prompt."""
        return self.messages[self.prompt_length :]

    def build_prompt(self, task: Task) -> list[Message]:
        msgs: list[Message] = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt})
        msgs.append({"role": "user", "content": task.prompt})
        return msgs

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[list[Message], dict]:
        super().reset(seed=seed)
        self.task = select_task(self.tasks, self._tasks_by_id, options, self.np_random, type(self).__name__)
        opener = self.task.metadata["opener"]
        exact, misplaced = self.task.metadata["opener_feedback"]
        self._start_episode_state(consistent(all_codes(self.length), opener, (exact, misplaced)))
        self._seen.add(opener)
        self.messages = self.build_prompt(self.task)
        self.prompt_length = len(self.messages)
        self._active = True
        info = {"task_id": self.task.id, "metadata": dict(self.task.metadata), "candidates": len(self.candidates)}
        return [dict(m) for m in self.messages], info

    async def astep(self, action: Action) -> StepResult:
        return self.step(action)  # pure computation, milliseconds: no need for a worker thread

    def step(self, action: Action) -> StepResult:
        if not self._active or self.task is None:
            raise ResetNeeded("call reset() before step(); the previous episode has ended")
        text = _action_text(action)
        reasoning, visible = split_reasoning(text)
        assistant: Message = {"role": "assistant", "content": visible}
        if reasoning is not None:
            assistant["reasoning_content"] = reasoning
        self.messages.append(assistant)

        secret: str = self.task.answer
        guess, problem = _parse_visible(visible, self.length)
        self.guesses.append(guess)
        used = len(self.guesses)
        left = self.max_guesses - used
        before = len(self.candidates)
        penalty = 0.0
        feedback: dict[str, Any] = {"guess": guess}
        if guess is None:
            kind = "invalid"
            penalty = INVALID_PENALTY
            reply = f"Guess {used} of {self.max_guesses} was not counted as a valid code: {problem}"
        elif guess in self._seen:
            kind = "repeated"
            penalty = INVALID_PENALTY
            exact, misplaced = score_guess(secret, guess)
            feedback.update(exact=exact, misplaced=misplaced)
            reply = (
                f"Guess {used} of {self.max_guesses}: {guess} was already tried ({describe(exact, misplaced)}), "
                "so it tells you nothing new."
            )
        else:
            exact, misplaced = score_guess(secret, guess)
            feedback.update(exact=exact, misplaced=misplaced)
            kind = "solved" if guess == secret else ("consistent" if guess in self.candidates else "inconsistent")
            if kind == "inconsistent":
                penalty = INCONSISTENT_PENALTY
            self._seen.add(guess)
            self.candidates = consistent(self.candidates, guess, (exact, misplaced))
            reply = f"Guess {used} of {self.max_guesses}: {guess} -> {describe(exact, misplaced)}."
            if kind == "inconsistent":
                reply += " (Earlier feedback had already ruled this code out.)"
        if kind in self.counts:
            self.counts[kind] += 1
        feedback["kind"] = kind

        shaping = self._potential(len(self.candidates)) - self._potential(before)
        penalty = min(penalty, PENALTY_CAP - self.penalty_total)
        self.shaping_total += shaping
        self.penalty_total += penalty
        solved = kind == "solved"
        terminated = solved or left <= 0
        reward = shaping - penalty + (1.0 if solved else 0.0)
        self.episode_return += reward

        info: dict[str, Any] = {
            "task_id": self.task.id,
            "turn": used,
            "feedback": feedback,
            "guesses_left": left,
            "candidates": len(self.candidates),
            "reward_components": self._components(reward, solved),
        }
        if terminated:
            self._active = False
            info["final_message"] = reply  # the game is over, so nothing is sent back to the policy
            return [], reward, True, False, info
        reply += f" {left} {'guess' if left == 1 else 'guesses'} left."
        obs = [{"role": "user", "content": reply}]
        self.messages.extend(obs)
        return [dict(m) for m in obs], reward, False, False, info

    def on_truncate(self) -> None:
        self._active = False

    def close(self) -> None:
        self._active = False

    # ----- helpers -----------------------------------------------------------------------
    def _potential(self, remaining: int) -> float:
        """SHAPING_SCALE times the fraction of the clue's uncertainty (in bits) resolved so far."""
        if self._initial_candidates <= 1:
            return SHAPING_SCALE  # the clue alone pins the code down: nothing left to learn
        return SHAPING_SCALE * (1.0 - math.log(max(remaining, 1)) / math.log(self._initial_candidates))

    def _components(self, reward: float, solved: bool) -> dict[str, float]:
        """Reported every step, so that an episode cut short by a turn limit is still logged as a failure."""
        return {
            "reward": reward,
            "success": float(solved),
            "guesses": float(len(self.guesses)),
            "shaping_total": self.shaping_total,
            "penalty_total": self.penalty_total,
            "episode_return": self.episode_return,
            "invalid_guesses": float(self.counts["invalid"]),
            "repeated_guesses": float(self.counts["repeated"]),
            "inconsistent_guesses": float(self.counts["inconsistent"]),
            "candidates_left": float(len(self.candidates)),
        }


def _action_text(action: Action) -> str:
    """The text of an action given as a string or an assistant message (content may be None or parts)."""
    if isinstance(action, Mapping):
        content = action.get("content") or ""
        if isinstance(content, list):  # OpenAI content parts
            return "".join(
                p.get("text", "") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
            )
        return content if isinstance(content, str) else str(content)
    return action if isinstance(action, str) else ("" if action is None else str(action))


def splits(n_train: int = 1000, n_test: int = 200, **kwargs: Any) -> dict[str, list[Task]]:
    """Both splits, checked to be disjoint by id and content."""
    out = {"train": make_tasks("train", n_train, **kwargs), "test": make_tasks("test", n_test, **kwargs)}
    check_disjoint(out)
    return out
