"""OFA's sequence generator: batched beam search or sampling over the KV-cached decoder.

Behaviour follows OFA's ``SequenceGenerator`` (spec ofa_data_and_tasks.md §7.1-7.2):

* decoding starts from ``bos``; every hypothesis ends in ``eos``, which is forced at step
  ``max_len = max_len_a * src_len + max_len_b`` (src_len = padded source width);
* per step, in this order: temperature, allowed-token/trie and ``constraint_range`` masks
  (before log_softmax, i.e. renormalised; after it with ``zero_shot``), log_softmax, forced
  prefix (else eos banned below ``min_len``), pad banned, unk penalty, ids 0-3 banned for
  ``gen_code``, eos forced at ``max_len``, repeated n-grams banned;
* beam search ranks 2K candidates; eos candidates among the first K are finished
  (score = sum of log-probs, divided by length**lenpen when normalising); the K best
  non-eos candidates continue. A sentence stops with K finished hypotheses or at max_len
  and then leaves the batch (its rows leave the cache).

Shape legend: B sentences, N unfinished sentences, K beam, R = N*K live rows,
t current step, T = t + 1 prefix length (bos included), V vocabulary, C candidates.

Deviations from upstream, all in states upstream never reaches in its own tasks: a beam
that could only be filled with an eos candidate (sampling) stays dead instead of being
revived; tokens outside a forced prefix are -inf (upstream uses min(prefix)-1 when no trie
is set, which lets non-prefix beams survive).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypedDict

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ofa_ds.generation import constraints as C
from ofa_ds.generation.search import BeamSearch, Candidates, Sampling
from ofa_ds.generation.trie import Trie
from ofa_ds.model.decoder import reorder_cache
from ofa_ds.model.encoder import reorder_encoder_out


@dataclass
class GenerationConfig:
    beam: int = 5
    """Beam size K; with ``sampling``, the number of samples per input."""
    max_len_a: float = 0.0
    max_len_b: int = 200
    """max_len = int(max_len_a * padded source length + max_len_b), tokens before the eos."""
    min_len: int = 1
    """eos is banned at steps < min_len."""
    lenpen: float = 1.0
    normalize_scores: bool = True
    """Rank by sum(log-probs) / length**lenpen (length includes eos); else by the sum."""
    unk_penalty: float = 0.0
    temperature: float = 1.0
    """Divides the logits before log_softmax."""
    no_repeat_ngram_size: int = 0
    constraint_range: tuple[int, int] | None = None
    """(start, end): ids 4..start-1 and >= end are banned, e.g. (50265, 58457) for image codes."""
    zero_shot: bool = False
    """Apply the trie / range after log_softmax (no renormalisation), as OFA's zero-shot VQA."""
    gen_code: bool = False
    """Image-code generation: decoder code path for every row; ids 0-3 banned before max_len."""
    sampling: bool = False
    sampling_topk: int = -1
    sampling_topp: float = -1.0
    max_positions: int | None = None
    """Upper bound on max_len; defaults to the model's ``max_positions``."""

    def __post_init__(self) -> None:
        if self.beam < 1 or self.temperature <= 0:
            raise ValueError(f"need beam >= 1 and temperature > 0, got {self.beam}, {self.temperature}")


class Hypothesis(TypedDict):
    tokens: torch.Tensor             # [L] generated ids (prefix included, bos excluded), ending in eos
    score: float                     # sum(positional_scores), / L**lenpen when normalising
    positional_scores: torch.Tensor  # [L] log-prob of each token


@dataclass
class _Live:
    """The R = N*K live hypotheses; row n*K + k is beam k of unfinished sentence n."""
    sentence: torch.Tensor        # [N] index of each unfinished sentence in the input batch
    tokens: torch.Tensor          # [R, T] bos + generated tokens
    cum_scores: torch.Tensor      # [R, t] cumulative log-prob after each generated token
    encoder_out: dict             # encoder outputs, rows aligned with ``tokens``
    cache: list                   # decoder KV cache, rows aligned with ``tokens``
    code_masks: torch.Tensor | None  # [R]
    prefix: torch.Tensor | None   # [N, P] forced prefix tokens, right-padded with pad

    def select(self, keep_N: torch.Tensor, rows_R: torch.Tensor, next_tokens_R, next_scores_R) -> "_Live":
        """Keep sentences ``keep_N``; row i of the result extends old row ``rows_R[i]``."""
        # Beams of one sentence share their encoder output (and cross-attention K/V): only
        # dropped sentences change them.
        same_sentences = bool(keep_N.all())
        reorder_cache(self.cache, rows_R, cross=not same_sentences)
        encoder_out = self.encoder_out if same_sentences else reorder_encoder_out(self.encoder_out, rows_R)
        return _Live(
            sentence=self.sentence[keep_N],
            tokens=torch.cat([self.tokens[rows_R], next_tokens_R[:, None]], dim=1),
            cum_scores=torch.cat([self.cum_scores[rows_R], next_scores_R[:, None]], dim=1),
            encoder_out=encoder_out,
            cache=self.cache,
            code_masks=None if self.code_masks is None else self.code_masks[rows_R],
            prefix=None if self.prefix is None else self.prefix[keep_N],
        )


class SequenceGenerator:
    """``SequenceGenerator(model, GenerationConfig(beam=5, max_len_b=16)).generate(src_tokens, ...)``.

    ``constraint_trie`` (a :class:`Trie` of ``[bos] + answer + [eos]``) or ``allowed_tokens_fn``
    (``fn(sentence_index, [bos] + tokens after the prefix) -> allowed ids``) restricts every
    step, e.g. to a VQA answer list. ``rng`` seeds sampling.
    """

    def __init__(self, model, config: GenerationConfig | None = None, *, constraint_trie: Trie | None = None,
                 allowed_tokens_fn: C.AllowedTokensFn | None = None, rng: torch.Generator | None = None,
                 task: str = "caption", progress: bool | None = None, **overrides):
        from ofa_ds.generation.presets import task_generation_config

        self.model = model
        # Without a config, OFA's settings for ``task`` (caption: beam 5, 16 tokens), not the
        # dataclass defaults (200 tokens: minutes per call on a CPU).
        self.cfg = dataclasses.replace(config or task_generation_config(task), **overrides)
        self.progress = progress
        mc = model.config
        self.bos, self.pad, self.eos, self.unk = mc.bos, mc.pad, mc.eos, getattr(mc, "unk", 3)
        self.vocab_size = mc.vocab_size
        self.max_positions = self.cfg.max_positions or mc.max_positions
        if constraint_trie is not None and allowed_tokens_fn is not None:
            raise ValueError("pass either constraint_trie or allowed_tokens_fn")
        if constraint_trie is not None:
            allowed_tokens_fn = lambda _sentence, prefix: constraint_trie.next(prefix)  # noqa: E731
        self.allowed_tokens_fn = allowed_tokens_fn
        if self.cfg.sampling:
            self.search = Sampling(self.cfg.sampling_topk, self.cfg.sampling_topp, rng)
        else:
            self.search = BeamSearch()

    def max_len(self, src_len: int) -> int:
        return min(int(self.cfg.max_len_a * src_len + self.cfg.max_len_b), self.max_positions)

    # -- main loop ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, src_tokens: torch.Tensor, src_lengths: torch.Tensor | None = None, *,
                 patch_images: torch.Tensor | None = None, patch_masks: torch.Tensor | None = None,
                 code_masks: torch.Tensor | None = None, prefix_tokens: torch.Tensor | None = None,
                 encoder_out: dict | None = None) -> list[list[Hypothesis]]:
        """Per input sentence, up to K hypotheses sorted best first.

        ``code_masks`` [B] selects the decoder's image-code path per sentence (all True with
        ``gen_code``); ``prefix_tokens`` [B, P] (right-padded with pad) are forced first.
        ``encoder_out`` reuses an encoder output of this batch instead of running the encoder.
        """
        if self.model.training:
            raise RuntimeError("generation needs the model in eval mode (dropout off): call model.eval()")
        B, K = src_tokens.shape[0], self.cfg.beam
        max_len = self.max_len(src_tokens.shape[1])
        if self.cfg.min_len > max_len:
            raise ValueError(f"min_len {self.cfg.min_len} exceeds max_len {max_len}")
        if encoder_out is None:
            encoder_out = self.model.encoder(src_tokens, src_lengths, patch_images=patch_images,
                                             patch_masks=patch_masks)
        live = self._start(encoder_out, B, code_masks, prefix_tokens, src_tokens.device)
        finished: list[list[Hypothesis]] = [[] for _ in range(B)]
        show = self.progress if self.progress is not None else max_len > 64
        with tqdm(total=max_len + 1, desc="decoding", unit="step", leave=False, disable=not show) as bar:
            for step in range(max_len + 1):
                lprobs = self._next_log_probs(live, step, max_len)                   # [R, V]
                N = live.sentence.shape[0]
                cand = self.search.step(step, lprobs.view(N, K, -1),
                                        live.cum_scores[:, -1].view(N, K) if step else None)
                done = self._finish(live, cand, step, max_len, finished)             # [N]
                bar.update(1)
                if done.all():
                    break
                live = self._advance(live, cand, ~done)
        return [sorted(hyps, key=lambda h: -h["score"]) for hyps in finished]

    def _start(self, encoder_out: dict, B: int, code_masks, prefix_tokens, device) -> _Live:
        K = self.cfg.beam
        if self.cfg.gen_code:
            code_masks = torch.ones(B, dtype=torch.bool, device=device)
        rows = torch.arange(B, device=device).repeat_interleave(K)                   # [B*K]
        return _Live(
            sentence=torch.arange(B, device=device),
            tokens=torch.full((B * K, 1), self.bos, dtype=torch.long, device=device),
            cum_scores=torch.zeros(B * K, 0, device=device),
            encoder_out=reorder_encoder_out(encoder_out, rows),
            cache=[],
            code_masks=None if code_masks is None else code_masks[rows],
            prefix=prefix_tokens,
        )

    # -- one step's scores -------------------------------------------------------------
    def _next_log_probs(self, live: _Live, step: int, max_len: int) -> torch.Tensor:
        """Processed log-probs [R, V] of the next token of every live row."""
        cfg = self.cfg
        logits, _ = self.model.decoder(live.tokens, live.encoder_out, code_masks=live.code_masks,
                                       cache=live.cache)
        scores = logits[:, -1].float() / cfg.temperature                            # [R, V]
        if not cfg.zero_shot:
            scores = self._apply_vocab_constraints(scores, live)
        lprobs = F.log_softmax(scores, dim=-1)
        if cfg.zero_shot:
            lprobs = self._apply_vocab_constraints(lprobs, live)

        if live.prefix is not None and step < live.prefix.shape[1] and step < max_len:
            C.force_prefix(lprobs, live.prefix[:, step].repeat_interleave(cfg.beam), self.pad)
        elif step < cfg.min_len:
            lprobs[:, self.eos] = C.NEG_INF
        lprobs.masked_fill_(lprobs.isnan(), C.NEG_INF)
        lprobs[:, self.pad] = C.NEG_INF
        lprobs[:, self.unk] -= cfg.unk_penalty
        if cfg.gen_code and step < max_len:
            lprobs[:, :C.NUM_SPECIAL] = C.NEG_INF
        if step >= max_len:  # force eos
            eos_lprobs = lprobs[:, self.eos].clone()
            lprobs.fill_(C.NEG_INF)
            lprobs[:, self.eos] = eos_lprobs
        if cfg.no_repeat_ngram_size > 0:
            C.block_repeated_ngrams(lprobs, live.tokens, cfg.no_repeat_ngram_size)
        return lprobs

    def _apply_vocab_constraints(self, scores_RV: torch.Tensor, live: _Live) -> torch.Tensor:
        if self.allowed_tokens_fn is not None:
            K = self.cfg.beam
            prefix_lens = ([0] * scores_RV.shape[0] if live.prefix is None
                           else live.prefix.ne(self.pad).sum(1).repeat_interleave(K).tolist())
            sentence = live.sentence.repeat_interleave(K).tolist()
            allowed = C.allowed_tokens_mask(live.tokens, prefix_lens, sentence, self.allowed_tokens_fn,
                                            scores_RV.shape[1], self.bos)
            scores_RV = scores_RV.masked_fill(~allowed, C.NEG_INF)
        if self.cfg.constraint_range is not None:
            C.restrict_to_range(scores_RV, *self.cfg.constraint_range)
        return scores_RV

    # -- bookkeeping ---------------------------------------------------------------------
    def _finish(self, live: _Live, cand: Candidates, step: int, max_len: int,
                finished: list[list[Hypothesis]]) -> torch.Tensor:
        """Store eos candidates ranked in the top K; returns which sentences are done [N]."""
        K = self.cfg.beam
        ends = cand.tokens[:, :K].eq(self.eos) & cand.scores[:, :K].isfinite()   # [N, K]
        n_idx, c_idx = ends.nonzero(as_tuple=True)  # row-major: rank order within a sentence
        if n_idx.numel():
            rows = n_idx * K + cand.beams[n_idx, c_idx]
            eos_col = torch.full_like(rows, self.eos)[:, None]
            tokens = torch.cat([live.tokens[rows, 1:], eos_col], dim=1)             # [M, t+1]
            cum = torch.cat([live.cum_scores[rows], cand.scores[n_idx, c_idx][:, None]], dim=1)
            positional = torch.diff(cum, dim=1, prepend=torch.zeros_like(cum[:, :1]))
            final = cum[:, -1]
            if self.cfg.normalize_scores:
                final = final / (step + 1) ** self.cfg.lenpen
            for i, s in enumerate(live.sentence[n_idx].tolist()):
                if len(finished[s]) < K:
                    finished[s].append({"tokens": tokens[i], "score": float(final[i]),
                                        "positional_scores": positional[i]})
        counts = torch.tensor([len(finished[s]) for s in live.sentence.tolist()], device=ends.device)
        return (counts >= K) | (step == max_len)

    def _advance(self, live: _Live, cand: Candidates, keep_N: torch.Tensor) -> _Live:
        """Continue each kept sentence with its K best non-eos candidates (in rank order).
        Where fewer exist, eos candidates fill the slots as dead beams (score -inf)."""
        K = self.cfg.beam
        scores, tokens, beams = (t[keep_N] for t in cand)                           # [N', C]
        ends = tokens.eq(self.eos) & scores.isfinite()
        n_cand = tokens.shape[1]
        priority = ends.long() * n_cand + torch.arange(n_cand, device=tokens.device)
        slot = priority.argsort(dim=1)[:, :K]                                          # [N', K]
        dead = ends.gather(1, slot)
        next_scores = scores.gather(1, slot).masked_fill(dead, C.NEG_INF)
        old_n = keep_N.nonzero(as_tuple=True)[0]
        rows = (old_n[:, None] * K + beams.gather(1, slot)).view(-1)
        return live.select(keep_N, rows, tokens.gather(1, slot).view(-1), next_scores.view(-1))


def generate(model, src_tokens, src_lengths=None, *, config: GenerationConfig | None = None,
             task: str = "caption", constraint_trie: Trie | None = None,
             allowed_tokens_fn: C.AllowedTokensFn | None = None, rng: torch.Generator | None = None,
             progress: bool | None = None, **net_input) -> list[list[Hypothesis]]:
    """One-shot helper: ``generate(model, src_tokens, src_lengths, patch_images=..., beam=5)``.
    Keyword arguments that are ``GenerationConfig`` fields override the search settings, which
    are ``config`` or else OFA's for ``task``; the rest go to :meth:`SequenceGenerator.generate`."""
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    overrides = {k: net_input.pop(k) for k in list(net_input) if k in fields}
    gen = SequenceGenerator(model, config, constraint_trie=constraint_trie, task=task, progress=progress,
                            allowed_tokens_fn=allowed_tokens_fn, rng=rng, **overrides)
    return gen.generate(src_tokens, src_lengths, **net_input)
