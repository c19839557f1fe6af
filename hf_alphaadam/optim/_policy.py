"""AdaPM's per-tensor momentum policy: which block gets no, full or low-rank momentum, chosen by name.

A *plan* says, for one parameter tensor, how its first and second moments are kept. It depends only on the
tensor's name, its shape and the optimizer options, never on its values, so it can be built for ``meta`` tensors
(memory accounting without allocating a model) and rebuilt identically on every rank.

Default block assignment (``shared/docs/algorithms.md`` §3.1; rows marked * are the project's choices):

=====================  ==============================================================  =================
role                   recognised names (``re.search`` on the parameter name)           momentum
=====================  ==============================================================  =================
token embedding        ``embed_tokens``, ``wte``, ``word_embeddings``, ...              none
lm head *              ``lm_head.weight`` (untied), ``embed_out``                       ``lm_head=`` (none)
position embedding *   ``wpe``, ``position_embeddings``, ``embed_positions``            full
fused QKV              GPT-2 ``attn.c_attn`` (Conv1D, stored (in, 3 d))                 q, k low-rank; v full
attention output       ``o_proj``, ``attn.c_proj``, ``attention.output.dense``, ...     none
value                  ``v_proj``, ``attention.self.value``                             full
query, key             ``q_proj``, ``k_proj``, ``query``, ``key``, ``q_attn``           low-rank
MLP                    ``gate_proj``, ``up_proj``, ``down_proj``, ``c_fc``,             low-rank
                       ``mlp.c_proj``, ``intermediate.dense``, ``output.dense``, ``fc1/2``
other matrices *       anything else with >= 2 dims (classifier, pooler, ...)           ``other=`` (full)
vectors *              every 1-D tensor (norms, biases)                                 full
=====================  ==============================================================  =================

Explicit regexes come first, in this order: ``none_modules``, ``full_modules``, ``lowrank_modules`` (an override of
the fused QKV weight applies to the whole tensor, unsplit). A 1-D tensor never gets low-rank momentum (it gets
full). A group option ``policy="none"|"full"|"lowrank"`` replaces the name rules for all matrices of that group
(and is the way to use AdaPM without parameter names).

Orientation: a *canonical* matrix has one row per output feature. ``nn.Linear`` / ``nn.Embedding`` weights are
canonical as stored (``(out, in)``; for higher-rank tensors ``(shape[0], prod(shape[1:]))``); GPT-2's ``Conv1D``
stores ``(in, out)``, recognised by ``transposed_modules``, and is transposed. Output slices of a fused QKV weight
are canonical row ranges; "one second-moment value per output row / per head" also counts canonical rows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ._schemas import ADAPM_SECOND_MOMENTS as SECOND_MOMENTS, GROUP_POLICIES, POLICIES  # noqa: F401

#: GPT-2's Conv1D weights (stored ``(in, out)``).
TRANSPOSED_PATTERN = r"(^|\.)(c_attn|c_proj|c_fc|q_attn)\.weight$"
#: GPT-2's fused self-attention Q|K|V (three equal output slices). Cross-attention ``c_attn`` is K|V and not split.
FUSED_QKV_PATTERN = r"(^|\.)attn\.c_attn\.weight$"

#: Ordered (role, pattern): the first pattern that matches (``re.search``) names the role of a >= 2-D tensor.
ROLE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("token_embedding", r"(^|\.)(embed_tokens|wte|word_embeddings|tok_embeddings|embed_in|shared)\.weight$"),
    ("lm_head", r"(^|\.)(lm_head(\.decoder)?|embed_out)\.weight$"),
    ("position_embedding", r"(^|\.)(wpe|position_embeddings|embed_positions)\.weight$"),
    ("attention_output", r"(^|\.)(o_proj|attn\.c_proj|attention\.output\.dense|(self_attn|attn|attention)\.out_proj)"
                         r"\.weight$"),
    ("value", r"(^|\.)(v_proj|value)\.weight$"),
    ("query", r"(^|\.)(q_proj|query|q_attn)\.weight$"),
    ("key", r"(^|\.)(k_proj|key)\.weight$"),
    ("mlp", r"(^|\.)(gate_proj|up_proj|down_proj|c_fc|mlp\.c_proj|intermediate\.dense|output\.dense|fc1|fc2)"
            r"\.weight$"),
)

#: Momentum of each role under ``policy="auto"`` (``lm_head`` and unmatched matrices follow options).
ROLE_POLICY = {
    "token_embedding": "none",
    "position_embedding": "full",
    "attention_output": "none",
    "value": "full",
    "query": "lowrank",
    "key": "lowrank",
    "mlp": "lowrank",
}


@dataclass(frozen=True)
class Segment:
    """Rows ``[start, stop)`` of a tensor's canonical matrix sharing one momentum kind.

    ``rows_per_v`` is the number of canonical rows that share one second-moment value (``second_moment="mini"``);
    0 means an element-wise (Adam) second moment. ``rank`` is the effective rank of a low-rank segment.
    """

    start: int
    stop: int
    momentum: str
    rank: int = 0
    rows_per_v: int = 0
    label: str = ""

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class MomentumPlan:
    """How one parameter tensor's state is kept (see the module docstring)."""

    name: str
    shape: tuple[int, ...]
    role: str
    reason: str
    transposed: bool
    segments: tuple[Segment, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def canonical_shape(self) -> tuple[int, int]:
        if len(self.shape) < 2:
            return (1, self.numel)
        if self.transposed:
            return (self.shape[1], self.shape[0])
        return (self.shape[0], self.numel // self.shape[0] if self.shape[0] else 0)

    @property
    def kind(self) -> str:
        """``"adam_full"`` (AdamW state, element-wise), ``"adam_none"`` (only Adam's v, element-wise) or
        ``"structured"`` (low-rank factors, row slices or a compact v: needs the whole matrix)."""
        if len(self.segments) == 1 and self.segments[0].rows_per_v == 0:
            if self.segments[0].momentum == "full":
                return "adam_full"
            if self.segments[0].momentum == "none":
                return "adam_none"
        return "structured"

    def lowrank_segments(self) -> list[Segment]:
        return [s for s in self.segments if s.momentum == "lowrank"]

    def full_segments(self) -> list[Segment]:
        return [s for s in self.segments if s.momentum == "full"]

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shapes of the state tensors this plan allocates (``step`` left out)."""
        kind = self.kind
        if kind == "adam_full":
            return {"exp_avg": self.shape, "exp_avg_sq": self.shape}
        if kind == "adam_none":
            return {"exp_avg_sq": self.shape}
        rows, cols = self.canonical_shape
        shapes: dict[str, tuple[int, ...]] = {}
        full_rows = sum(s.rows for s in self.full_segments())
        if full_rows:
            shapes["exp_avg"] = (full_rows, cols)
        lowrank = self.lowrank_segments()
        if lowrank:
            shapes["lowrank_left"] = (len(lowrank), lowrank[0].rows, lowrank[0].rank)
            shapes["lowrank_right"] = (len(lowrank), lowrank[0].rank, cols)
        if all(s.rows_per_v == 0 for s in self.segments):
            shapes["exp_avg_sq"] = (rows, cols)
        else:
            shapes["exp_avg_sq"] = (sum(s.rows // s.rows_per_v for s in self.segments),)
        return shapes

    def describe_momentum(self) -> str:
        parts = []
        for s in self.segments:
            text = f"lowrank(r={s.rank})" if s.momentum == "lowrank" else s.momentum
            parts.append(f"{s.label}:{text}" if s.label else text)
        return " ".join(parts)

    def describe_second_moment(self) -> str:
        if all(s.rows_per_v == 0 for s in self.segments):
            return "adam"
        kinds = sorted({"per head" if s.rows_per_v > 1 else "per row" for s in self.segments})
        return "mini(" + ", ".join(kinds) + ")"


def role_of(name: str) -> str | None:
    """The role of a >= 2-D tensor from its name under the default patterns (``None``: not recognised)."""
    for role, pattern in ROLE_PATTERNS:
        if re.search(pattern, name):
            return role
    return None


def _search(pattern: str | None, name: str | None) -> bool:
    return pattern is not None and name is not None and re.search(pattern, name) is not None


def build_plan(name: str | None, shape: tuple[int, ...], options: dict) -> MomentumPlan:
    """The plan of one tensor from its name (may be ``None`` when the group's ``policy`` is not ``"auto"``), its
    (whole, unsharded) shape and the group's options (``rank``, ``second_moment``, ``head_dim``, ``policy``,
    ``lm_head``, ``other``, ``none_modules``, ``full_modules``, ``lowrank_modules``, ``fused_qkv_modules``,
    ``transposed_modules``, ``dense_fallback``)."""
    shape = tuple(int(s) for s in shape)
    label_name = name if name is not None else "?"
    transposed_re = _pattern(options["transposed_modules"], TRANSPOSED_PATTERN)
    fused_re = _pattern(options["fused_qkv_modules"], FUSED_QKV_PATTERN)
    transposed = len(shape) == 2 and _search(transposed_re, name)
    fused = False
    role = "vector" if len(shape) < 2 else (role_of(name) if name is not None else None) or "other"
    if _search(options["none_modules"], name):
        momentum, reason = "none", "none_modules"
    elif _search(options["full_modules"], name):
        momentum, reason = "full", "full_modules"
    elif _search(options["lowrank_modules"], name):
        momentum, reason = "lowrank", "lowrank_modules"
    elif len(shape) < 2:
        momentum, reason = "full", "1-D"
    elif options["policy"] != "auto":
        momentum, reason = options["policy"], f"policy={options['policy']}"
    elif _search(fused_re, name):
        momentum, reason, fused, role = "fused", "fused q|k|v", True, "fused_qkv"
    elif role == "lm_head":
        momentum, reason = options["lm_head"], "lm_head option"
    elif role == "other":
        momentum, reason = options["other"], "unrecognised (other option)"
    else:
        momentum, reason = ROLE_POLICY[role], f"default ({role})"
    if momentum == "lowrank" and len(shape) < 2:
        momentum, reason = "full", reason + "; 1-D cannot be low-rank"
    if any(s == 0 for s in shape):
        momentum = "full" if momentum in ("lowrank", "fused") else momentum
        fused = False

    plan = MomentumPlan(label_name, shape, role, reason, bool(transposed), ())
    rows, cols = plan.canonical_shape
    mini = options["second_moment"] == "mini" and len(shape) >= 2
    head_dim = options["head_dim"]
    if fused:
        if rows % 3:
            raise ValueError(f"{label_name}: a fused q|k|v weight needs an output size divisible by 3, got shape "
                             f"{shape} ({rows} outputs); exclude it with fused_qkv_modules= or give it a policy "
                             "with none_modules= / full_modules= / lowrank_modules=")
        third = rows // 3
        layout = [(0, third, "lowrank", "q"), (third, 2 * third, "lowrank", "k"), (2 * third, rows, "full", "v")]
    else:
        layout = [(0, rows, momentum, "")]
    segments = []
    for start, stop, kind, label in layout:
        seg_rows = stop - start
        rank = 0
        if kind == "lowrank":
            rank = min(int(options["rank"]), seg_rows, cols)
            if options["dense_fallback"] and rank * (seg_rows + cols) >= seg_rows * cols:
                kind, rank = "full", 0
        rows_per_v = 0
        if mini:
            rows_per_v = 1
            per_head = label in ("q", "k") or (not fused and role in ("query", "key"))
            if head_dim is not None and per_head:
                if seg_rows % head_dim:
                    raise ValueError(f"{label_name}: head_dim={head_dim} does not divide the {seg_rows} output rows "
                                     f"of this query/key block (shape {shape}); pass the model's head dimension")
                rows_per_v = head_dim
        segments.append(Segment(start, stop, kind, rank, rows_per_v, label))
    return MomentumPlan(label_name, shape, role, reason, bool(transposed), tuple(segments))


def _pattern(value: str | None, default: str) -> str | None:
    return default if value == "auto" else value


def format_table(plans: list[MomentumPlan]) -> str:
    """A fixed-width text table of plans (one row per tensor) for the log."""
    header = ("parameter", "shape", "role", "momentum", "second moment", "state / AdamW")
    rows = []
    for plan in plans:
        shape = "x".join(str(s) for s in plan.shape) + (" (in,out)" if plan.transposed else "")
        state = sum(math.prod(s) for s in plan.state_shapes().values())
        ratio = f"{state / (2 * plan.numel):.3f}" if plan.numel else "-"
        rows.append((plan.name, shape, plan.role, plan.describe_momentum(), plan.describe_second_moment(), ratio))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])
