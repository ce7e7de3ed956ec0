"""The machinery of the objectives that score a chosen response against rejected ones: a round's pairs
as ranked groups, encoded in one of two layouts (a shared prompt, or a row per response), collated, and
scored in one forward pass, with the options that answer the rank term's likelihood displacement."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Iterable

import torch

from rationale_loop.data.encode import Encoded, Encoder
from rationale_loop.judging.mine import unique_sides
from rationale_loop.run.records import Generation, Problem
from rationale_loop.training.losses import mixce_token_losses
from rationale_loop.training.objectives.base import Declared, RankItem, RoundData, learned_tokens
from rationale_loop.training.rank_scope import scored_windows
from rationale_loop.training.shared_prompt import SharedRow, collate_rows, response_sums
from rationale_loop.training.token_loss import learned_logprobs, response_logprobs


@dataclass(frozen=True)
class SharedGroup:
    """A ranked group for the shared-prompt forward (shared_prompt.py): one row, the prompt then the chosen,
    the rejected and (when it has the same prompt and is not the chosen response) the anchor response;
    an anchor under another prompt (a replayed SFT example) is a row of its own."""

    row: SharedRow
    rejected: int
    anchor: str  # "chosen": read off the chosen response; "in_row": the row's last response; "own_row"
    anchor_row: SharedRow | None = None
    windows: tuple[tuple[int, int], ...] | None = None  # the ranked responses' scored tokens (rank_scope)
    reference: tuple[float, tuple[float, ...]] | None = None  # scores under the round's starting weights

    @property
    def input_ids(self) -> list[int]:
        return self.row.input_ids


@dataclass(frozen=True)
class RowGroup:
    """A ranked group as rows of their own (objective.share_prompt=false): the chosen row, the rejected
    rows, and the anchor's row (None when the anchor is read off the chosen row)."""

    chosen: Encoded
    rejected: tuple[Encoded, ...]
    anchor: Encoded | None
    windows: tuple[tuple[int, int], ...] | None = None
    reference: tuple[float, tuple[float, ...]] | None = None

    @property
    def input_ids(self) -> list[int]:  # the widest row: the width the group asks of its micro-batch
        return max((row.input_ids for row in (self.chosen, *self.rejected, *([self.anchor] if self.anchor else []))), key=len)


@dataclass
class GroupScores:
    """Log-probability sums of a micro-batch's ranked groups: over the tokens each rank score counts
    (rank_scope), and over the whole chosen response (RPO's NLL); token counts beside them."""

    chosen: torch.Tensor  # [G]
    chosen_tokens: torch.Tensor  # [G]
    rejected: torch.Tensor  # [G, K]
    rejected_tokens: torch.Tensor  # [G, K]
    mask: torch.Tensor  # [G, K]: real negatives (groups may differ in K)
    anchor_nll: torch.Tensor  # the CE anchor's (Mix)CE sum
    chosen_whole: torch.Tensor  # [G]
    chosen_whole_tokens: torch.Tensor  # [G]


class RankedGroups(Declared):
    """Shared by the objectives that score a chosen response against rejected ones in one forward
    pass: encoding, collation and scores. Two layouts, the same numbers: with `share_prompt`
    (objective.share_prompt, the default), a group's prompt is forwarded once with its responses packed
    behind it (shared_prompt.py); without, each response is a row of its own (chosen, then rejected, then
    anchors).

    Options that answer the rank term's likelihood displacement (docs/recipe.md): which tokens a score
    counts (`rank_scope`, rank_scope.py), rejected scores without gradient (`detach_rejected`), and a
    floor under the chosen score at its value under the round's starting weights (`chosen_floor`, DPOP).
    """

    # The options every ranked objective reads; each subclass adds its own coefficients.
    ranking_options = ("share_prompt", "rank_scope", "step_delimiters", "detach_rejected", "chosen_floor")
    share_anchor = True  # an anchor that is the chosen response is read off the chosen row (see encode)
    trains_on_pairs = True
    length_normalised = True  # a score is the mean log-probability of its tokens (rpo: the sum)

    def __init__(self, cfg: Any):
        self.cfg = self.own_options(cfg)
        self.coefficients = self.terms(self.cfg)
        if self.chosen_floor > 0:
            self.coefficients["floor"] = float(self.cfg.chosen_floor)

    @staticmethod
    def terms(cfg: Any) -> dict[str, float]:
        """The loss terms and their coefficients under the objective's options (the floor's added by __init__)."""
        raise NotImplementedError

    @property
    def share_prompt(self) -> bool:
        return bool(getattr(self.cfg, "share_prompt", False))

    @property
    def rank_scope(self) -> str:
        return getattr(self.cfg, "rank_scope", "sequence")

    @property
    def chosen_floor(self) -> float:
        return float(getattr(self.cfg, "chosen_floor", 0.0))

    @property
    def needs_reference(self) -> bool:
        """Whether the loss reads scores under the round's starting weights (computed once, by `prepare`)."""
        return self.chosen_floor > 0

    def _windows(self, encoder: Encoder, responses: list[list[int]]) -> tuple[tuple[int, int], ...] | None:
        if self.rank_scope == "sequence":
            return None  # every learned token: the recipe's score, computed as it always was

        def decode(sequences: list[list[int]]) -> list[str]:
            return encoder.tokenizer.batch_decode(sequences, skip_special_tokens=False, clean_up_tokenization_spaces=False)

        return tuple(scored_windows(responses, self.rank_scope, decode, tuple(self.cfg.step_delimiters)))

    def encode(self, item: RankItem, encoder: Encoder) -> Any | None:
        """The chosen row, the rejected rows and the anchor row; None for the anchor when it is the
        chosen response under the same prompt (anchor=chosen, cpo_simpo): its NLL then comes from the
        chosen row, which is forwarded anyway, instead of forwarding the same tokens twice. With
        share_prompt, the same group as a SharedGroup; either way, None when any of its sequences is
        longer than max_length, so both layouts keep the same groups."""
        chosen = encoder.encode(item.prompt, item.chosen)
        rejected = [encoder.encode(item.prompt, r) for r in item.rejected]
        reused = self.share_anchor and item.anchor == item.chosen and (item.anchor_prompt is None or item.anchor_prompt == item.prompt)
        anchor = None if reused else encoder.encode(item.anchor_prompt or item.prompt, item.anchor)
        if chosen is None or (anchor is None and not reused) or any(r is None for r in rejected):
            return None
        # The rows just encoded already hold each response's ids behind its prompt: split them, not re-tokenize.
        prompt = list(encoder.prompt_ids(item.prompt))
        responses = [e.input_ids[len(prompt):] for e in (chosen, *rejected)]
        windows = self._windows(encoder, responses)
        if not self.share_prompt:
            return RowGroup(chosen, tuple(rejected), anchor, windows)
        if reused:
            return SharedGroup(SharedRow(prompt, responses), len(rejected), "chosen", windows=windows)
        if item.anchor_prompt is None or item.anchor_prompt == item.prompt:
            return SharedGroup(SharedRow(prompt, [*responses, anchor.input_ids[len(prompt):]]), len(rejected), "in_row",
                                windows=windows)
        anchor_prompt = list(encoder.prompt_ids(item.anchor_prompt))
        anchor_row = SharedRow(anchor_prompt, [anchor.input_ids[len(anchor_prompt):]])
        return SharedGroup(SharedRow(prompt, responses), len(rejected), "own_row", anchor_row, windows=windows)

    def collate(self, encoded: list[Any], encoder: Encoder) -> dict[str, Any]:
        if encoded and isinstance(encoded[0], SharedGroup):
            batch = self._collate_shared(encoded, encoder)
        else:
            batch = self._collate_rows(encoded, encoder)
        if encoded[0].reference is not None:
            batch["reference_chosen"] = torch.tensor([g.reference[0] for g in encoded], dtype=torch.float64)
            references = [g.reference[1] for g in encoded]
            rejected = torch.zeros((len(encoded), max(map(len, references))), dtype=torch.float64)
            for g, scores in enumerate(references):
                rejected[g, : len(scores)] = torch.tensor(scores, dtype=torch.float64)
            batch["reference_rejected"] = rejected
        return batch

    @staticmethod
    def _collate_rows(groups: list[RowGroup], encoder: Encoder) -> dict[str, Any]:
        chosen = [g.chosen for g in groups]
        rejected = [r for g in groups for r in g.rejected]
        anchors = [g.anchor for g in groups if g.anchor is not None]
        batch = encoder.collate(chosen + rejected + anchors)
        batch["group_sizes"] = [len(g.rejected) for g in groups]
        # Which groups take their anchor from their chosen row (the rest have a row of their own, in order).
        batch["anchor_is_chosen"] = [g.anchor is None for g in groups]
        if groups[0].windows is not None:
            # The rank score's tokens, laid out as labels[:, 1:] (the logits at t - 1 predict token t).
            windows = [g.windows[0] for g in groups] + [w for g in groups for w in g.windows[1:]]
            mask = torch.zeros(batch["labels"][:, 1:].shape, dtype=torch.bool)
            for row, (example, (begin, end)) in enumerate(zip(chosen + rejected, windows)):
                first = len(example.input_ids) - sum(label != -100 for label in example.labels)  # the response's first token
                mask[row, first + begin - 1 : first + end - 1] = True
            batch["rank_mask"] = mask
        return batch

    @staticmethod
    def _collate_shared(groups: list[SharedGroup], encoder: Encoder) -> dict[str, Any]:
        """Rows: every group's, then the anchors under another prompt. Responses are numbered across the
        batch in row order (collate_rows), so each group's chosen, rejected and anchor responses are known."""
        rows = [g.row for g in groups] + [g.anchor_row for g in groups if g.anchor_row is not None]
        batch = collate_rows(rows, encoder.pad_id)
        chosen, rejected, anchors, next_response = [], [], [], 0
        for g in groups:
            chosen.append(next_response)
            rejected += range(next_response + 1, next_response + 1 + g.rejected)
            anchors.append(next_response if g.anchor == "chosen" else next_response + 1 + g.rejected if g.anchor == "in_row" else None)
            next_response += len(g.row.responses)
        for g, anchor in enumerate(anchors):  # the anchors' own rows follow the groups' rows, in group order
            if anchor is None:
                anchors[g], next_response = next_response, next_response + 1
        is_anchor = torch.zeros(batch["responses"], dtype=torch.bool)
        is_anchor[anchors] = True
        batch.update(group_sizes=[g.rejected for g in groups], chosen_response=chosen, rejected_responses=rejected,
                     anchor_response=is_anchor)
        if groups[0].windows is not None:
            # The rank score's tokens among the learned ones, in collate_rows' order (rows, responses, tokens);
            # a response without a window (an anchor) is not ranked, so its tokens are left out.
            scored: list[bool] = []
            for index, row in enumerate(rows):
                windows = groups[index].windows if index < len(groups) else ()  # anchors' own rows come last
                for r, response in enumerate(row.responses):
                    begin, end = windows[r] if r < len(windows) else (0, 0)
                    scored += [begin <= t < end for t in range(len(response))]
            batch["rank_token"] = torch.tensor(scored, dtype=torch.bool)
        return batch

    @staticmethod
    def _anchor_rows(batch: dict[str, Any]) -> tuple[list[int], slice]:
        """The chosen rows that double as anchors, and the slice of the anchor rows of their own."""
        reused = [g for g, flag in enumerate(batch.get("anchor_is_chosen", [])) if flag]
        ranked = len(batch["group_sizes"]) + sum(batch["group_sizes"])
        return reused, slice(ranked, None)

    def units(self, batch: dict[str, Any]) -> dict[str, int]:
        groups = len(batch["group_sizes"])
        if "shared_mask" in batch:
            anchor_tokens = batch["anchor_response"][batch["response_of_token"]]
            units = {"anchor": int(anchor_tokens.sum()), "rank": groups}
        else:
            reused, own = self._anchor_rows(batch)
            labels = batch["labels"]
            units = {"anchor": learned_tokens(labels[reused]) + learned_tokens(labels[own]), "rank": groups}
        if self.chosen_floor > 0:
            units["floor"] = groups
        return units

    def scores(self, model: torch.nn.Module, batch: dict[str, Any], mixce_eta: float = 1.0, chunk: int = 0) -> GroupScores:
        """Every ranked response's log-probability sum and token count, and the anchor's (Mix)CE sum. The
        anchor is a token-level CE like SFT's, so `mixce_eta` (the stage's) mixes it the same way."""
        if "shared_mask" in batch:
            return self._shared_scores(model, batch, mixce_eta, chunk)
        sizes = batch["group_sizes"]
        groups, negatives = len(sizes), sum(sizes)
        logprobs, learned = learned_logprobs(model, batch, chunk)  # chunk: token_loss.py
        ranked = groups + negatives
        whole, whole_tokens = logprobs[:ranked].sum(dim=1), learned[:ranked].sum(dim=1)
        if "rank_mask" in batch:
            scored = batch["rank_mask"][:ranked].to(logprobs.device)
            sums, counts = (logprobs[:ranked] * scored).sum(dim=1), scored.sum(dim=1)
        else:
            sums, counts = whole, whole_tokens
        rejected, mask = _by_group(sums[groups:ranked], sizes)
        rejected_tokens, _ = _by_group(counts[groups:ranked], sizes)
        reused, own = self._anchor_rows(batch)
        anchor_nll = logprobs.new_zeros(())
        for rows in (reused, own):
            anchor_nll = anchor_nll + mixce_token_losses(logprobs[rows], learned[rows], mixce_eta).sum()
        return GroupScores(sums[:groups], counts[:groups], rejected, rejected_tokens, mask, anchor_nll,
                           whole[:groups], whole_tokens[:groups])

    @staticmethod
    def _shared_scores(model: torch.nn.Module, batch: dict[str, Any], mixce_eta: float, chunk: int = 0) -> GroupScores:
        logprobs = response_logprobs(model, batch, chunk)
        whole, whole_tokens = response_sums(logprobs, batch)
        if "rank_token" in batch:
            sums, counts = response_sums(logprobs, batch, batch["rank_token"].to(logprobs.device))
        else:
            sums, counts = whole, whole_tokens
        chosen = batch["chosen_response"]
        rejected, mask = _by_group(sums[batch["rejected_responses"]], batch["group_sizes"])
        rejected_tokens, _ = _by_group(counts[batch["rejected_responses"]], batch["group_sizes"])
        anchor_tokens = batch["anchor_response"].to(logprobs.device)[batch["response_of_token"].to(logprobs.device)]
        anchor_nll = mixce_token_losses(logprobs, anchor_tokens, mixce_eta).sum()
        return GroupScores(sums[chosen], counts[chosen], rejected, rejected_tokens, mask, anchor_nll,
                           whole[chosen], whole_tokens[chosen])

    def ranked(self, scores: GroupScores) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen [G], rejected [G, K]) as the rank term takes them: mean log-probabilities (or sums, for an
        objective that is not length-normalised), the rejected ones without gradient under detach_rejected."""
        chosen, rejected = scores.chosen, scores.rejected
        if self.length_normalised:
            chosen = chosen / scores.chosen_tokens.clamp(min=1)
            rejected = rejected / scores.rejected_tokens.clamp(min=1)
        if self.cfg.detach_rejected:
            rejected = rejected.detach()  # the rank term then moves the chosen responses only
        return chosen, rejected

    def floor_sum(self, chosen: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """DPOP's floor: sum over groups of max(0, s_c_start - s_c), s_c_start the chosen score under the
        round's starting weights; {} without objective.chosen_floor."""
        if self.chosen_floor <= 0:
            return {}
        start = batch["reference_chosen"].to(chosen.device, chosen.dtype)
        return {"floor": torch.clamp(start - chosen, min=0).sum()}

    @torch.no_grad()
    def prepare(self, model: torch.nn.Module, encoded: list[Any], encoder: Encoder, micro_batch_size: int) -> None:
        """Score every group once under the starting weights (before the first update, as SPIN's reference
        pass), into each encoded group's `reference`, when the loss needs them; the same numbers as a
        frozen copy of the model would give, without a second model in memory."""
        if not self.needs_reference:
            return
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        for start in range(0, len(encoded), micro_batch_size):
            chunk = [replace(group, reference=None) for group in encoded[start : start + micro_batch_size]]
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.collate(chunk, encoder).items()}
            chosen, rejected = self.ranked(self.scores(model, batch))
            for g, group in enumerate(chunk):
                scores = tuple(float(s) for s in rejected[g, : batch["group_sizes"][g]])
                encoded[start + g] = replace(group, reference=(float(chosen[g]), scores))
        model.train(was_training)


def _by_group(scores: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rejected scores laid out [G, K] by group, with the mask of real ones (groups may differ in K)."""
    rejected = scores.new_zeros((len(sizes), max(sizes)))
    mask = torch.zeros((len(sizes), max(sizes)), dtype=torch.bool, device=scores.device)
    offset = 0
    for g, size in enumerate(sizes):
        rejected[g, :size] = scores[offset : offset + size]
        mask[g, :size] = True
        offset += size
    return rejected, mask


def _unique_incorrect(generations: Iterable[Generation]) -> dict[str, tuple[str, ...]]:
    """Per question, its unique valid-but-incorrect completions in sample order (the miner's rule)."""
    by_question: dict[str, list[Generation]] = {}
    for sample in generations:
        if sample.valid and not sample.correct:
            by_question.setdefault(sample.question_id, []).append(sample)
    return {question: tuple(s.completion for s in unique_sides(samples)[1]) for question, samples in by_question.items()}


def rank_items(data: RoundData, anchor: str, listwise: bool = False) -> list[RankItem]:
    """One group per mined pair, then one per preference pair from data=; listwise, the chosen response
    faces every unique incorrect response of its question (the rank loss then averages over them)
    instead of its one paired rejection.

    The CE anchor: "gold", the question's gold rationale and answer (the first Memphis card); "chosen",
    the chosen completion (the later card); "replay", a gold SFT example, each pair its own, drawn by a
    seeded shuffle of the SFT set (for a pool whose questions have an answer but no rationale)."""
    negatives = _unique_incorrect(data.generations) if listwise else {}
    replayed = _replay_order(data) if anchor == "replay" else []
    items = []
    for index, pair in enumerate(data.pairs):
        anchor_prompt = None
        if anchor == "gold":
            problem = data.problems[pair.question_id]
            if not problem.rationale:
                raise ValueError(
                    f"objective.anchor=gold needs a gold rationale, but {pair.question_id} has none; "
                    "use objective.anchor=chosen or objective.anchor=replay for this task"
                )
            target = data.fmt.response(problem.rationale, problem.answer)
        elif anchor == "replay":
            example = replayed[index % len(replayed)]
            anchor_prompt, target = data.fmt.prompt(example.question), data.fmt.response(example.rationale, example.answer)
        else:
            target = pair.chosen
        rejected = negatives.get(pair.question_id, (pair.rejected,)) if listwise else (pair.rejected,)
        items.append(RankItem(pair.prompt, pair.chosen, rejected, target, anchor_prompt))
    items += [RankItem(prompt, chosen, (rejected,), chosen) for prompt, chosen, rejected in data.preferences]
    return items


def _replay_order(data: RoundData) -> list[Problem]:
    import random

    examples = [p for p in data.sft if p.rationale]
    if not examples:
        raise ValueError("objective.anchor=replay needs SFT examples with gold rationales, and the task has none")
    random.Random(f"replay/{data.seed}").shuffle(examples)
    return examples
