"""Sample completions for problems and judge each one: parse it by the prompt format, then check its
answer against the gold answer. Shared by a round's generation phase and by evaluation."""

from __future__ import annotations

from typing import Collection, Iterator, Sequence


from rationale_loop.data.formats import ReasoningFormat
from rationale_loop.generate.base import Backend, Completion, Sampling
from rationale_loop.run.records import Generation, Problem
from rationale_loop.views.terminal import progress_bar
from rationale_loop.judging.verify import is_correct


def judge(problem: Problem, prompt: str, sample_index: int, completion: Completion, fmt: ReasoningFormat, verify_kind: str,
          chain: str = "ignore") -> Generation:
    """A sample cut off by the token limit is invalid, not incorrect, whatever text it holds. With
    `chain` (verify.chain) "count" or "check", the rationale's arithmetic steps are checked and
    recorded; with "check", a wrong step makes a right answer incorrect."""
    parsed = fmt.parse(completion.text)
    reason = "truncated" if completion.finish_reason == "length" else parsed.reason
    valid = reason is None
    answer_correct = valid and is_correct(verify_kind, parsed.answer or "", problem.answer)
    steps = None
    if chain != "ignore" and valid:
        from rationale_loop.judging.chain import check_chain

        steps = {**check_chain(parsed.rationale or "").as_record(), "answer_correct": answer_correct}
    correct = answer_correct and not (chain == "check" and steps["wrong"])
    return Generation(
        question_id=problem.id,
        sample_index=sample_index,
        prompt=prompt,
        completion=completion.text,
        rationale=parsed.rationale if valid else None,
        answer=parsed.answer if valid else None,
        gold=problem.answer,
        finish_reason=completion.finish_reason,
        valid=valid,
        correct=correct,
        num_tokens=completion.num_tokens,
        invalid_reason=reason,
        chain=steps,
    )


def sample_and_judge(
    backend: Backend,
    problems: Sequence[Problem],
    fmt: ReasoningFormat,
    sampling: Sampling,
    verify_kind: str,
    desc: str = "generate",
    skip: Collection[int] = (),
    chain: str = "ignore",
    hinted: bool = False,
) -> Iterator[list[Generation]]:
    """Yield the judged samples of one problem at a time, as the backend finishes them, with a progress
    bar over questions on a terminal (silent otherwise). Problems whose index is in `skip` (already
    sampled by an interrupted run) are not yielded. With `hinted` (STaR's rationalization), each
    question is asked with its gold answer as a hint (fmt.hinted_prompt)."""
    if hinted:
        prompts = [fmt.hinted_prompt(p.question, p.answer) for p in problems]
    else:
        prompts = [fmt.prompt(p.question) for p in problems]
    with progress_bar(len(problems), len(skip), desc, unit="q") as progress:
        for index, completions in backend.generate(prompts, sampling, skip):
            problem = problems[index]
            yield [judge(problem, prompts[index], k, c, fmt, verify_kind, chain) for k, c in enumerate(completions)]
            progress.update(1)
