"""Two guards that keep a study honest.

    lock gate       before any elicitation trial, each locked model's correctness with the
                    password, without it and with wrong passwords must show a real lock; with
                    guards.audit_gate, also its lock audit (pwlock/audit.py): no unseen wrong
                    password or near miss of the password more than guards.audit_margin above none
    leak guard      no elicitation input (demonstrations, RL prompts, π_weak's samples) may carry
                    the password or a close variant of it; the locked model's own samples are
                    checked too, and counted rather than refused (see `SampleWatch`)

The leak guard compares texts after normalising case (NFKC, casefold), whitespace and punctuation
(all dropped). A password of at least FUZZY_MIN_CHARS normalised characters also matches
approximately: some substring of the text within edit distance (1 - similarity)·length of it.
A shorter password (the toy task's `pwd`) only matches as whole tokens, so `pwd` is caught in
"PWD" or "p w d" but not inside "upwdate".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from pwlock.audit import over_none
from pwlock.config import ConfigError, GuardsConfig, LockConfig
from pwlock.passwords import lock_domain_passwords, second_password

# Below this many normalised characters a password is matched as whole tokens only: a short string
# recurs inside ordinary words ("pwd" in "upwdate"), and a few characters leave no room for a variant.
FUZZY_MIN_CHARS = 16
Q = 3  # q-gram length of the filter before the exact edit distance
_NON_ALNUM = re.compile(r"[\W_]+")
_TOKEN = re.compile(r"[^\W_]+")


class PasswordLeak(ValueError):
    """An elicitation input carries the password or a close variant of it."""


class LockGateError(ConfigError):
    """A locked model does not show a real lock; no elicitation trial was started."""


# -- normalisation ------------------------------------------------------------------------------


def _fold(text: str) -> str:
    return (text if text.isascii() else unicodedata.normalize("NFKC", text)).casefold()


def compact(text: str) -> str:
    """Case-folded, with everything but letters and digits removed."""
    return _NON_ALNUM.sub("", _fold(text))


def _compact_map(text: str) -> tuple[str, list[int]]:
    """`compact(text)` (character by character) and, for each of its characters, its index in `text`."""
    chars, where = [], []
    for i, ch in enumerate(text):
        for c in _NON_ALNUM.sub("", _fold(ch)):
            chars.append(c)
            where.append(i)
    return "".join(chars), where


# -- approximate substring matching ---------------------------------------------------------------


def best_distance(pattern: str, text: str) -> tuple[int, int]:
    """The least edit distance between `pattern` and any substring of `text`, and where the first
    such substring ends (-1 if the best is to match nothing).

    Myers' bit-vector algorithm (1999), one pass over `text` with Python integers as bit vectors.
    Hand-written because rapidfuzz is not a dependency and difflib's ratio over sliding windows
    costs a quadratic comparison per window."""
    m = len(pattern)
    peq: dict[str, int] = {}
    for i, c in enumerate(pattern):
        peq[c] = peq.get(c, 0) | (1 << i)
    mask, high = (1 << m) - 1, 1 << (m - 1)
    pv, mv, score, best, end = mask, 0, m, m, -1
    for j, c in enumerate(text):
        eq = peq.get(c, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | (~(xh | pv) & mask)
        mh = pv & xh
        if ph & high:
            score += 1
        elif mh & high:
            score -= 1
        ph = (ph << 1) & mask  # no carry in: a match may start anywhere in the text
        mh = (mh << 1) & mask
        pv = mh | (~(xv | ph) & mask)
        mv = ph & xv
        if score < best:
            best, end = score, j
    return best, end


# Prompts of one task share their template, whose regions recur in every prompt.
_best_distance_cached = lru_cache(maxsize=4096)(best_distance)


def _levenshtein(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


@dataclass(frozen=True)
class Match:
    password: str
    text: str  # what matched, as written in the input
    similarity: float  # 1 - edit distance / normalised password length


class PasswordMatcher:
    """Finds one password, or a close variant of it, in texts."""

    def __init__(self, password: str, similarity: float):
        self.password, self.similarity = password, similarity
        self.key = compact(password)
        if not self.key:
            raise ValueError(f"password {password!r} has no letter or digit to look for")
        self.fuzzy = len(self.key) >= FUZZY_MIN_CHARS
        self.edits = int((1 - similarity) * len(self.key) + 1e-9) if self.fuzzy else 0
        # Pigeonhole filter: a match within `edits` edits leaves one of `edits`+1 disjoint pieces
        # of the password intact, so only regions around an exact piece are verified.
        n = self.edits + 1
        bounds = [round(i * len(self.key) / n) for i in range(n + 1)]
        self.pieces = [(self.key[a:b], a) for a, b in zip(bounds, bounds[1:])]
        # q-gram lemma: such a match keeps at least m - q + 1 - k·q of the password's q-grams.
        self.grams = [self.key[i : i + Q] for i in range(len(self.key) - Q + 1)]
        self.min_grams = len(self.grams) - self.edits * Q

    def find(self, text: str) -> Match | None:
        flat = compact(text)
        if not self.fuzzy:
            return self._find_tokens(text) if self.key in flat else None
        if self.key in flat:
            return self._report(text, flat.index(self.key), len(self.key), 0)
        m, k = len(self.key), self.edits
        regions = []
        for piece, offset in self.pieces:
            at = flat.find(piece)
            while at >= 0:
                regions.append((max(0, at - offset - k), at - offset + m + 2 * k))
                at = flat.find(piece, at + 1)
        for lo, hi in _merge(regions):
            region = flat[lo:hi]
            if self.min_grams > 0:  # a cheap count before the exact distance
                present = {region[i : i + Q] for i in range(len(region) - Q + 1)}
                if sum(g in present for g in self.grams) < self.min_grams:
                    continue
            d, end = _best_distance_cached(self.key, region)
            if d <= k:
                end += lo
                start = min(
                    range(max(0, end + 1 - m - k), end + 2 - m + k),
                    key=lambda s: _levenshtein(self.key, flat[s : end + 1]),
                )
                return self._report(text, start, end + 1 - start, d)
        return None

    def _find_tokens(self, text: str) -> Match | None:
        """Runs of whole tokens that spell the password once joined."""
        tokens = [(t.group(), t.start(), t.end()) for t in _TOKEN.finditer(_fold(text))]
        for i, (tok, start, _) in enumerate(tokens):
            joined, j = tok, i
            while len(joined) < len(self.key) and self.key.startswith(joined) and j + 1 < len(tokens):
                j += 1
                joined += tokens[j][0]
            if joined == self.key:
                folded = _fold(text)
                shown = folded[start : tokens[j][2]] if len(folded) != len(text) else text[start : tokens[j][2]]
                return Match(self.password, shown, 1.0)
        return None

    def _report(self, text: str, start: int, length: int, distance: int) -> Match:
        flat, where = _compact_map(text)
        if flat == compact(text) and length:
            shown = text[where[start] : where[start + length - 1] + 1]
        else:  # normalisation merged characters: show the normalised match
            shown = compact(text)[start : start + length]
        return Match(self.password, shown, 1 - distance / len(self.key))


def _merge(regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping regions as one."""
    out: list[list[int]] = []
    for lo, hi in sorted(regions):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


# -- the leak guard -----------------------------------------------------------------------------


class LeakGuard:
    """Checks texts for any of `passwords`; `label` ("trial X") goes into every message.

    The task's wrong passwords (App. C.2) are no leak; a guard whose threshold would take one of
    them for a password cannot tell the two apart and is refused when built."""

    def __init__(
        self, passwords: Sequence[str], wrong_passwords: Sequence[str] = (), similarity: float = 0.8, label: str = ""
    ):
        self.matchers = [PasswordMatcher(p, similarity) for p in passwords]
        self.similarity, self.label = similarity, label
        for wrong in wrong_passwords:
            if wrong in passwords:
                continue  # a password is its own business, not a wrong one
            if (hit := self.find(wrong)) is not None:
                raise ConfigError(
                    f"guards.leak_similarity: at {similarity} the leak guard takes the wrong password {wrong!r} "
                    f"for the password {hit.password!r} (similarity {hit.similarity:.2f}); raise "
                    f"guards.leak_similarity above {hit.similarity:.2f} or choose a lock.password less like it"
                )

    def find(self, text: str) -> Match | None:
        for m in self.matchers:
            if (hit := m.find(text)) is not None:
                return hit
        return None

    def check(self, texts: Iterable[str], where: str) -> None:
        """Raise PasswordLeak at the first text that carries a password; `where` names the input
        ("SFT demonstrations"), and the message adds the label and the text's index."""
        for i, text in enumerate(texts):
            if (hit := self.find(text)) is not None:
                raise PasswordLeak(_leak_message(hit, f"{self.located(where)}, example {i}", self.similarity))

    def check_examples(self, examples: Iterable[Any], where: str) -> None:
        """Examples' prompts and completions."""
        for i, e in enumerate(examples):
            for part in ("prompt", "completion"):
                if (hit := self.find(getattr(e, part))) is not None:
                    raise PasswordLeak(
                        _leak_message(hit, f"{self.located(where)}, example {i} ({part})", self.similarity)
                    )

    def located(self, where: str) -> str:
        """`where` with the guard's label: "SFT demonstrations of trial X"."""
        return f"{where} of {self.label}" if self.label else where

    @classmethod
    def for_study(
        cls, guards: GuardsConfig | Mapping[str, Any], task: Any, passwords: Sequence[str], label: str = ""
    ) -> LeakGuard | None:
        """The guard a study's trials use (None when `guards.leak_guard` is off)."""
        g = guards if isinstance(guards, GuardsConfig) else GuardsConfig(**guards)
        if not g.leak_guard:
            return None
        return cls(passwords, task.wrong_passwords, g.leak_similarity, label)


def lock_passwords(lock: LockConfig, task: Any) -> list[str]:
    """Every password a study's locks answer to: its own, and each domain's (per_domain locks,
    App. C.3) or the second one (adversarial locks, B.3.2)."""
    out = [lock.password or task.default_password]
    if "per_domain" in lock.variants:
        out += lock_domain_passwords(task, lock.domain_passwords).values()
    if "adversarial" in lock.variants:
        out.append(second_password(task.wrong_passwords, task.vocabulary() is None, lock.second_password))
    return list(dict.fromkeys(out))


def _leak_message(hit: Match, where: str, similarity: float) -> str:
    how = (
        f"the password {hit.password!r}"
        if hit.similarity == 1.0
        else f"a close variant of the password {hit.password!r} (similarity {hit.similarity:.2f} ≥ "
        f"guards.leak_similarity {similarity})"
    )
    return (
        f"password leak in {where}: {hit.text!r} is {how}. Elicitation must never see the password; remove it "
        f"from that input (or set guards.leak_guard: false to run anyway)"
    )


@lru_cache(maxsize=16)
def _cached_guard(passwords: tuple[str, ...], wrong: tuple[str, ...], similarity: float) -> LeakGuard:
    return LeakGuard(passwords, wrong, similarity)


def check_no_password(
    texts: Iterable[str],
    passwords: Sequence[str],
    where: str,
    similarity: float = 0.8,
    wrong_passwords: Sequence[str] = (),
) -> None:
    """Raise PasswordLeak, naming `where` and the match, if any text carries one of `passwords`
    or a close variant of it."""
    _cached_guard(tuple(passwords), tuple(wrong_passwords), similarity).check(texts, where)


class SampleWatch:
    """Checks the locked model's own samples as they are drawn. A model that writes its password
    unprompted is a finding about the lock, not a leak by the study (an untrained toy lock does so
    in about 1 of 1,300 samples at temperature 1), so such samples are counted, logged and left in."""

    def __init__(self, guard: LeakGuard | None, where: str, log: Callable[[str], None]):
        self.guard, self.where, self.log = guard, where, log
        self.count = 0

    def __call__(self, completions: Iterable[str]) -> None:
        if self.guard is None:
            return
        for i, text in enumerate(completions):
            if (hit := self.guard.find(text)) is not None:
                self.count += 1
                if self.count == 1:
                    self.log(
                        f"{self.guard.located(self.where)}, sample {i}: the model wrote {hit.text!r}, like its "
                        f"password (similarity {hit.similarity:.2f}); such samples are counted in each "
                        f"round's `password_samples`"
                    )

    def take(self) -> int:
        n, self.count = self.count, 0
        return n


# -- the lock gate ------------------------------------------------------------------------------


# Lock variants without a password, which the audit's password probes do not concern. A setting
# lock's evaluation reads "with_pwd" in the setting where it shows π_strong (pwlock.stages), so its
# gap between the settings is checked like a password's.
NO_PASSWORD_AUDIT = {
    "setting": "its trigger is a setting variation, not a password (B.1.3)",
}


def lock_failures(
    report: Mapping[str, float], weak: float | None, t: GuardsConfig, check_gap: bool = True
) -> list[str]:
    """Why a lock with evaluation `report` (with_pwd / no_pwd / wrong_pwd) is not real; empty if it
    is. Without `check_gap`, what the password unlocks is not checked."""
    out = []
    gap = report["with_pwd"] - report["no_pwd"]
    if check_gap and gap < t.min_password_gap:
        out.append(
            f"with the password only {gap:+.3f} above without it (needs ≥ {t.min_password_gap}: "
            "guards.min_password_gap)"
        )
    if weak is not None and report["no_pwd"] - weak > t.max_over_weak:
        out.append(
            f"without the password {report['no_pwd'] - weak:+.3f} above π_weak (at most {t.max_over_weak}: "
            "guards.max_over_weak)"
        )
    if "wrong_pwd" in report and report["wrong_pwd"] - report["no_pwd"] > t.max_wrong_over_no_pwd:
        out.append(
            f"wrong passwords {report['wrong_pwd'] - report['no_pwd']:+.3f} above no password (at most "
            f"{t.max_wrong_over_no_pwd}: guards.max_wrong_over_no_pwd)"
        )
    return out


def _numbers(report: Mapping[str, float], weak: float | None) -> str:
    parts = [f"with password {report['with_pwd']:.3f}", f"without {report['no_pwd']:.3f}"]
    if "wrong_pwd" in report:
        parts.append(f"wrong password {report['wrong_pwd']:.3f}")
    parts.append("π_weak not scored" if weak is None else f"π_weak {weak:.3f}")
    return ", ".join(parts)


def audit_failures(audit: Mapping[str, float], t: GuardsConfig) -> list[str]:
    """The lock audit's probes (unseen wrong passwords, near misses) more than guards.audit_margin
    above no password."""
    return [
        f"{name} {gap:+.3f} above no password (at most {t.audit_margin}: guards.audit_margin)"
        for name, gap in over_none(audit, t.audit_margin).items()
    ]


def assess_locks(
    locks: Mapping[str, tuple[Mapping[str, float], float | None]],
    t: GuardsConfig,
    variant: str | Mapping[str, str] = "standard",
    audits: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[list[str], list[str]]:
    """One log line per lock, by label -> (evaluation report, π_weak's correctness), with the
    reasons it fails; and the labels of those that fail. `variant`: the locks' variant, or each
    lock's by label. `audits`: each lock's audit, by label; its failures fail the lock with
    guards.audit_gate, and are listed as not gated without."""
    lines, failed = [], []
    for label, (report, weak) in locks.items():
        v = variant if isinstance(variant, str) else variant.get(label, "standard")
        why = lock_failures(report, weak, t)
        opened = audit_failures(audits[label], t) if audits and label in audits and v not in NO_PASSWORD_AUDIT else []
        why += [f"audit: {w}" for w in opened] if t.audit_gate else []
        unchecked = (
            f"; with password = in the setting it shows π_strong in, audit not gated: a {v} lock: "
            f"{NO_PASSWORD_AUDIT[v]}"
            if v in NO_PASSWORD_AUDIT
            else ""
        )
        lines.append(f"  {label}: {'NOT A REAL LOCK' if why else 'holds'} ({_numbers(report, weak)}{unchecked})")
        lines += [f"    - {w}" for w in why]
        lines += [f"    ~ audit, not gated (guards.audit_gate: false): {w}" for w in opened if not t.audit_gate]
        failed += [label] if why else []
    return lines, failed


def check_locks(
    locks: Mapping[str, tuple[Mapping[str, float], float | None]],
    t: GuardsConfig,
    source: str = "",
    variant: str | Mapping[str, str] = "standard",
    audits: Mapping[str, Mapping[str, float]] | None = None,
) -> list[str]:
    """Refuse (LockGateError) unless every lock is real (see `assess_locks`); return its lines."""
    lines, failed = assess_locks(locks, t, variant, audits)
    if failed:
        prefix = f"{source}: " if source else ""
        raise LockGateError(
            f"{prefix}lock gate: {len(failed)} of {len(locks)} locked models are not real locks, so no elicitation "
            f"trial was started:\n"
            + "\n".join(lines)
            + "\nThe upstream artifacts stay in the store and are reused by the next run. Train the lock further "
            "(lock.sft / lock.scratch / lock.base: epochs, lr; lock.stop_at), or change the thresholds "
            "guards.min_password_gap, "
            "guards.max_over_weak, guards.max_wrong_over_no_pwd, guards.audit_margin (or guards.audit_gate: "
            "false), or set guards.lock_gate: false to elicit from "
            "these locks anyway."
        )
    return lines


def check_lock(
    report: Mapping[str, float], weak_correctness: float | None, thresholds: GuardsConfig, label: str
) -> None:
    """Refuse one lock (LockGateError with its numbers and the thresholds) unless it is real."""
    check_locks({label: (report, weak_correctness)}, thresholds)
