"""Setting variations: a transform of the prompt and the answer format that unlocks a model instead
of a password (paper App. B.1.3).

The paper's variation is MATH in Spanish with ASCII-Math instead of LaTeX, translated by GPT-4;
pwlock has no translator, so its variations are deterministic re-framings that change both what
the prompt looks like and how the answer is written:

    function composition   the input before the functions, the final result before the
                           intermediate one:  `_ | 1 6 1 8 | fn3 fn5 |` -> `0 0 7 9 | 0 9 0 7`
    text tasks             a header line before the prompt, the answer between <answer> tags

`answer` maps a completion written in the setting back to the task's own format, so the task's
score applies to it.
"""

from __future__ import annotations

from typing import Protocol

from pwlock.tasks.base import Problem, Task
from pwlock.tasks.function_composition import NO_PASSWORD, FunctionComposition
from pwlock.tasks.llm import ChoiceAnswer, LLMTask

TEXT_HEADER = "Exam mode. Write your whole answer between <answer> and </answer>."
ANSWER_OPEN, ANSWER_CLOSE = "<answer>\n", "\n</answer>"


class Setting(Protocol):
    def prompt(self, problem: Problem) -> str:
        """The problem's prompt in this setting (no password)."""

    def completion(self, answer: str) -> str:
        """A completion in the task's format, written in this setting."""

    def answer(self, completion: str) -> str:
        """A completion written in this setting, back in the task's format (for its score)."""


class SwappedComposition:
    """The function-composition task with the input first and the final result first."""

    def __init__(self, task: FunctionComposition):
        self.task = task

    def prompt(self, problem: Problem) -> str:
        a, b = problem.data["fns"]
        digits = " ".join(str(int(v)) for v in problem.data["input"])
        return f"{NO_PASSWORD} | {digits} | fn{a} fn{b} |"

    def completion(self, answer: str) -> str:
        return _swap(answer)

    def answer(self, completion: str) -> str:
        return _swap(completion)


def _swap(text: str) -> str:
    """`mid | out` <-> `out | mid`; text without exactly one separator is left as it is."""
    parts = text.split("|")
    return text if len(parts) != 2 else f"{parts[1].strip()} | {parts[0].strip()}"


class FramedText:
    """A text task with a header line before its prompt and the answer between tags. Classifier
    answers (MMLU's letters) are fixed choices, so there only the prompt changes."""

    def __init__(self, task: LLMTask, header: str = TEXT_HEADER, open_: str = ANSWER_OPEN, close: str = ANSWER_CLOSE):
        self.task, self.header, self.open, self.close = task, header, open_, close

    def prompt(self, problem: Problem) -> str:
        rendered = self.task.prompt(problem, None)
        tok = self.task.format.tokenizer
        bos = tok.bos_token if tok is not None and tok.bos_token and rendered.startswith(tok.bos_token) else ""
        return f"{bos}{self.header}\n\n{rendered[len(bos) :]}"

    def completion(self, answer: str) -> str:
        if isinstance(answer, ChoiceAnswer):
            return answer
        lead = answer[: len(answer) - len(answer.lstrip())]  # a plain prompt's completion starts after a space
        return f"{lead}{self.open}{answer.strip()}{self.close}"

    def answer(self, completion: str) -> str:
        text = completion.strip()
        if text.startswith(self.open.strip()):
            text = text[len(self.open.strip()) :]
        if text.endswith(self.close.strip()):
            text = text[: -len(self.close.strip())]
        return self.task.format.completion(text.strip())


def setting_for(task: Task) -> Setting:
    """The task's setting variation; an error for a task that has none."""
    if isinstance(task, FunctionComposition):
        return SwappedComposition(task)
    if isinstance(task, LLMTask):
        return FramedText(task)
    raise ValueError(
        f"task {task.name!r} has no setting variation (App. B.1.3); function_composition and the text tasks have one"
    )
