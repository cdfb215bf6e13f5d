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
    """[B, C] summed constrained log-probs of every candidate after each sample's prompt.

    The trie's edges (node -> allowed next id) are scored level by level: an edge's logit is
    the decoder's final hidden state at its node times the id's output embedding, so the
    full-vocabulary projection is never computed; the constrained log_softmax normalises over
    the node's edges only (what masking every other id to -inf does)."""
    tree = answers.tree()
    device = prompts[0].device
    levels = _edge_levels(tree, device)
    W = model.decoder.output_projection.weight
    scores = []
    for s, prompt in enumerate(prompts):
        enc = _sample_encoder_out(encoder_out, s)
        edge_lp = torch.zeros(levels["n_edges"], device=device)
        cache: list = []
        _, extra = model.decoder(prompt[None], enc, cache=cache, project=False)
        hidden = extra["hidden"][:, -1]                                          # [1, d]
        for depth, lv in enumerate(levels["by_depth"]):
            if depth:
                reorder_cache(cache, lv["parent_rows"], cross=False)  # cross K/V stay [1, ...] and broadcast
                tokens = torch.cat([prompt[None].expand(len(lv["prefix"]), -1), lv["prefix"]], dim=1)
                _, extra = model.decoder(tokens, enc, cache=cache, project=False)
                hidden = extra["hidden"][:, -1]                                  # [R, d]
            logits = (hidden[lv["edge_row"]].float() * W[lv["edge_token"]].float()).sum(-1)   # [E]
            edge_lp[lv["edge_ids"]] = logits - _segment_logsumexp(logits, lv["edge_row"], len(hidden))
        scores.append((edge_lp[levels["path_edges"]] * levels["path_mask"]).sum(-1))
    return torch.stack(scores)


def _segment_logsumexp(values_E: torch.Tensor, segment_E: torch.Tensor, n: int) -> torch.Tensor:
    """logsumexp of ``values`` within each segment, broadcast back to the entries [E]."""
    peak = torch.full((n,), float("-inf"), device=values_E.device).scatter_reduce(0, segment_E, values_E, "amax")
    total = torch.zeros(n, device=values_E.device).index_add_(0, segment_E, (values_E - peak[segment_E]).exp())
    return (peak + total.log())[segment_E]


def _edge_levels(tree: dict, device) -> dict:
    """Per depth: the nodes' prefixes, their parents' rows in the previous depth and their
    edges (row within the depth, next id, edge id); per candidate: its edge ids."""
    key = ("levels", str(device))
    if key in tree:
        return tree[key]
    by_depth_nodes: dict[int, list[int]] = {}
    for n, d in enumerate(tree["depth"]):
        by_depth_nodes.setdefault(d, []).append(n)
    edge_id, levels = {}, []
    for d in sorted(by_depth_nodes):
        nodes = by_depth_nodes[d]
        rows, toks, ids = [], [], []
        for r, n in enumerate(nodes):
            for k, tok in enumerate(tree["children"][n]):
                edge_id[(n, k)] = len(edge_id)
                rows.append(r)
                toks.append(tok)
                ids.append(edge_id[(n, k)])
        prev = {n: r for r, n in enumerate(by_depth_nodes.get(d - 1, []))}
        levels.append({
            "prefix": torch.tensor([tree["prefix"][n] for n in nodes], dtype=torch.long, device=device),
            "parent_rows": torch.tensor([prev.get(tree["parent"][n], 0) for n in nodes], device=device),
            "edge_row": torch.tensor(rows, device=device), "edge_token": torch.tensor(toks, device=device),
            "edge_ids": torch.tensor(ids, device=device)})
    L = max(len(p) for p in tree["paths"])
    path_edges = torch.zeros(len(tree["paths"]), L, dtype=torch.long)
    path_mask = torch.zeros(len(tree["paths"]), L)
    for c, p in enumerate(tree["paths"]):
        path_edges[c, :len(p)] = torch.tensor([edge_id[e] for e in p])
        path_mask[c, :len(p)] = 1.0
    tree[key] = {"by_depth": levels, "n_edges": len(edge_id), "path_edges": path_edges.to(device),
                 "path_mask": path_mask.to(device)}
    return tree[key]


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
