"""Closed answer sets: the candidate trie, training constraint rows, and all-candidate scoring.

VQA, SNLI-VE and ImageNet score every candidate answer ``a`` after a decoder prompt ``p``
(spec §5.2 "allcand"): ``score(a) = sum_j log p(a_j | p, a_<j)`` over the answer tokens and
eos, each log-prob renormalised over what the trie allows after ``a_<j`` (the logits of other
ids are -inf before the softmax). The best-scoring candidate is the prediction.

Two implementations with the same result:

* :func:`score_naive` is OFA's computation: a full decoder pass over ``[p ; a]`` per candidate,
  ``chunk`` candidates per pass (OFA: 20; ``chunk=1`` is the one-candidate-per-pass loop).
* :func:`score_fast` runs the decoder prompt once per sample (the KV cache keeps it), then walks
  the candidate trie level by level: one batched decoder step per depth scores every trie node
  of that depth, so a prefix shared by many answers ("red", "red and white") is computed once.
  The cross-attention K/V of the sample's encoder output are computed once and broadcast over
  all nodes. Its cost is (#trie nodes) decoder positions instead of (#candidates x (|p| + |a|)).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Sequence

import torch

from ofa_ds.generation.trie import Trie
from ofa_ds.model.decoder import reorder_cache


def load_answer_list(path: Path) -> list[str]:
    """Candidates in index order from OFA's pickled ``{answer: label}`` (``.pkl``) or a JSON
    object / list; candidate i is the i-th key (OFA's convention)."""
    if path.suffix == ".pkl":
        with open(path, "rb") as f:
            table = pickle.load(f)
    else:
        import json

        table = json.loads(path.read_text())
    if isinstance(table, dict):
        return [str(a) for a in table]
    if isinstance(table, list):
        return [str(a) for a in table]
    raise ValueError(f"{path}: expected a {{answer: label}} table or a list of answers")


class AnswerSet:
    """Candidate answers, their tokens (``BPE(" " + answer)``) and the trie over
    ``[bos ; tokens ; eos]``."""

    def __init__(self, answers: Sequence[str], vocab, *, max_tokens: int | None = None):
        self.answers = list(answers)
        self.index = {a: i for i, a in enumerate(self.answers)}
        self.bos, self.eos = vocab.bos, vocab.eos
        self.tokens = [vocab.encode_line(" " + a, add_bos=False, add_eos=False)[:max_tokens].tolist()
                       for a in self.answers]
        self.trie = Trie(([self.bos, *t, self.eos] for t in self.tokens), eos=self.eos)
        self._tree = None

    def __len__(self) -> int:
        return len(self.answers)

    def constraint_rows(self, answer_tokens: Sequence[int]) -> list[list[int]]:
        """Allowed ids at each target position of ``[answer ; eos]`` (training masks)."""
        prefix = [self.bos, *answer_tokens]
        return [sorted(self.trie.next(prefix[:j + 1])) for j in range(len(answer_tokens) + 1)]

    def first_tokens(self) -> list[int]:
        return sorted(self.trie.next([self.bos]))

    # -- the trie as level-ordered node tables (for score_fast) -------------------------
    def tree(self) -> dict:
        """Nodes = answer prefixes without eos; node 0 is the empty prefix. Per node: its
        depth, parent, last token and sorted children; per candidate: (node, child slot) of
        each of its tokens and eos."""
        if self._tree is not None:
            return self._tree
        node_of = {(): 0}
        parent, token, depth = [-1], [self.bos], [0]
        for toks in self.tokens:
            for d in range(1, len(toks) + 1):
                key = tuple(toks[:d])
                if key not in node_of:
                    node_of[key] = len(parent)
                    parent.append(node_of[key[:-1]])
                    token.append(key[-1])
                    depth.append(d)
        children = [set() for _ in parent]
        for toks in self.tokens:
            for d in range(len(toks) + 1):
                children[node_of[tuple(toks[:d])]].add(toks[d] if d < len(toks) else self.eos)
        children = [sorted(c) for c in children]
        paths = []
        for toks in self.tokens:
            seq = [*toks, self.eos]
            paths.append([(node_of[tuple(toks[:d])], children[node_of[tuple(toks[:d])]].index(seq[d]))
                          for d in range(len(seq))])
        self._tree = {"parent": parent, "token": token, "depth": depth, "children": children, "paths": paths,
                      "prefix": [list(k) for k, _ in sorted(node_of.items(), key=lambda kv: kv[1])]}
        return self._tree


def _sample_encoder_out(encoder_out: dict, s: int) -> dict:
    return {k: v[s:s + 1] for k, v in encoder_out.items()}


@torch.no_grad()
def score_fast(model, encoder_out: dict, prompts: Sequence[torch.Tensor], answers: AnswerSet) -> torch.Tensor:
    """[B, C] summed constrained log-probs of every candidate after each sample's prompt."""
    tree = answers.tree()
    n_nodes = len(tree["parent"])
    K = max(len(c) for c in tree["children"])
    device = prompts[0].device
    children = torch.full((n_nodes, K), -1, dtype=torch.long)
    for i, c in enumerate(tree["children"]):
        children[i, :len(c)] = torch.tensor(c)
    children = children.to(device)
    by_depth: dict[int, list[int]] = {}
    for i, d in enumerate(tree["depth"]):
        by_depth.setdefault(d, []).append(i)
    # Candidate paths as (node, slot) index tensors, padded with a zero-score dummy entry.
    L = max(len(p) for p in tree["paths"])
    path_node = torch.full((len(answers), L), n_nodes, dtype=torch.long)
    path_slot = torch.zeros((len(answers), L), dtype=torch.long)
    for c, p in enumerate(tree["paths"]):
        path_node[c, :len(p)] = torch.tensor([n for n, _ in p])
        path_slot[c, :len(p)] = torch.tensor([k for _, k in p])
    path_node, path_slot = path_node.to(device), path_slot.to(device)

    scores = []
    for s, prompt in enumerate(prompts):
        enc = _sample_encoder_out(encoder_out, s)
        child_lp = torch.zeros(n_nodes + 1, K, device=device)   # last row: the padding dummy
        cache: list = []
        logits, _ = model.decoder(prompt[None], enc, cache=cache)
        level, level_logits = [0], logits[:, -1]
        depth = 0
        while True:
            idx = torch.tensor(level, device=device)
            child_lp[idx] = _children_log_probs(level_logits, children[idx])
            depth += 1
            nxt = by_depth.get(depth)
            if not nxt:
                break
            pos = {node: r for r, node in enumerate(level)}
            rows = torch.tensor([pos[tree["parent"][n]] for n in nxt], device=device)
            reorder_cache(cache, rows, cross=False)  # cross K/V stay [1, ...] and broadcast
            tokens = torch.tensor([tree["prefix"][n] for n in nxt], device=device)
            tokens = torch.cat([prompt[None].expand(len(nxt), -1), tokens], dim=1)
            logits, _ = model.decoder(tokens, enc, cache=cache)
            level, level_logits = nxt, logits[:, -1]
        scores.append(child_lp[path_node, path_slot].sum(-1))
    return torch.stack(scores)


def _children_log_probs(logits_RV: torch.Tensor, children_RK: torch.Tensor) -> torch.Tensor:
    """log_softmax over each row's allowed children (padding slots -1 -> -inf, then 0)."""
    gathered = logits_RV.float().gather(1, children_RK.clamp(min=0))
    gathered = gathered.masked_fill(children_RK < 0, float("-inf"))
    lp = gathered - torch.logsumexp(gathered, dim=1, keepdim=True)
    return lp.masked_fill(children_RK < 0, 0.0)


@torch.no_grad()
def score_naive(model, encoder_out: dict, prompts: Sequence[torch.Tensor], answers: AnswerSet, *,
                chunk: int = 20, pad: int = 1) -> torch.Tensor:
    """[B, C] as :func:`score_fast`, computed as OFA does: per sample and chunk of candidates,
    decoder input ``[prompt ; answer]``, target ``[prompt[1:] ; answer ; eos]``, trie-masked
    log_softmax, summed over the answer positions."""
    V = model.config.vocab_size
    device = prompts[0].device
    out = torch.zeros(len(prompts), len(answers), device=device)
    for s, prompt in enumerate(prompts):
        P = len(prompt)
        for start in range(0, len(answers), chunk):
            cands = answers.tokens[start:start + chunk]
            T = P + max(len(a) for a in cands)
            inp = torch.full((len(cands), T), pad, dtype=torch.long, device=device)
            tgt = torch.full((len(cands), T), pad, dtype=torch.long, device=device)
            allowed = torch.ones(len(cands), T, V, dtype=torch.bool, device=device)
            for r, a in enumerate(cands):
                inp[r, :P + len(a)] = torch.cat([prompt, torch.tensor(a, dtype=torch.long, device=device)])
                tgt[r, P - 1:P + len(a)] = torch.tensor([*a, answers.eos], device=device)
                for j, ids in enumerate(answers.constraint_rows(a)):
                    allowed[r, P - 1 + j] = False
                    allowed[r, P - 1 + j, ids] = True
            enc = {k: v[s:s + 1].expand(len(cands), *v.shape[1:]) for k, v in encoder_out.items()}
            logits, _ = model.decoder(inp, enc)
            lprobs = torch.log_softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=-1)
            keep = tgt.ne(pad)
            lp = lprobs.gather(-1, tgt.clamp(min=0)[..., None]).squeeze(-1).masked_fill(~keep, 0.0)
            out[s, start:start + len(cands)] = lp.sum(1)
    return out
