"""cocotb regression of `hw.router.Router` against `sw.router.QuantizedRouter.route`.

Each case streams its tokens' int16 logits (with random idles on every input stream), then reads the
whole dispatch table back (counts, then each queue) and compares it with the golden model's, entry
for entry, and the overflow count with `dispatch_overflow`.

Parameters: ``config`` (preset), ``overrides`` (AccelConfig fields), ``cases`` (dicts: ``mode``,
``tokens``, ``experts``, ``k``, ``groups``, ``topk_groups``, ``logits`` (random | ties | one_expert
| every_expert), ``seed``, ``idle``, and ``d_model`` for the router to compute the logits from int8
tokens and router weights itself), optional ``report_file``.
"""

from __future__ import annotations

import random

import cocotb
import torch
from cocotb.triggers import FallingEdge, RisingEdge

from ...config import preset
from ...formats.router import (LOGIT, ROUTER_COUNTERS, TOKEN_GATE, RouterMode, bias_write,
                                router_command, router_token, router_weight_write)
from ...sw import numerics as nx
from ...sw.quantized import QuantizedLinear
from ...sw.router import QuantizedRouter, dispatch_overflow, dispatch_table
from ...sw.reference import MoESpec
from ..harness import StallGenerator, check_cases, reset, start_clock, tb_params
from .streams import StreamSource


def case_logits(case: dict, generator: torch.Generator) -> torch.Tensor:
    tokens, experts = case["tokens"], case["experts"]
    kind = case["logits"]
    if kind == "ties":                        # a handful of values: ties everywhere
        return torch.randint(-2, 3, (tokens, experts), generator=generator) * 64
    logits = torch.randint(-2000, 2000, (tokens, experts), generator=generator)
    if kind == "one_expert":                  # every token's favourite is the same expert
        logits[:, experts // 3] = 8000
    elif kind == "every_expert":              # token t prefers expert t mod E
        logits[torch.arange(tokens), torch.arange(tokens) % experts] = 8000
    return logits


class RouterTB:
    def __init__(self, dut, config, rng: random.Random, idle: float):
        self.dut, self.config, self.rng, self.idle = dut, config, rng, idle

    def source(self, name: str) -> StreamSource:
        return StreamSource(self.dut, name, StallGenerator(self.rng, self.idle))

    async def read(self, port: str, addr: int):
        getattr(self.dut, f"{port}__addr").value = addr
        getattr(self.dut, f"{port}__en").value = 1
        await RisingEdge(self.dut.clk)
        await RisingEdge(self.dut.clk)
        return int(getattr(self.dut, f"{port}__data").value)

    async def run(self, case: dict) -> dict:
        config, dut = self.config, self.dut
        generator = torch.Generator().manual_seed(case["seed"])
        spec = MoESpec(8, 8, case["experts"], case["k"], router=case["mode"],
                       n_groups=case.get("groups", 1), topk_groups=case.get("topk_groups", 1))
        gemm = None
        if case.get("d_model"):                # the router computes the logits itself
            weight = torch.randn(spec.n_experts, case["d_model"], generator=generator)
            if case["logits"] == "ties":
                weight.zero_()                 # every logit 0: all experts tied
            layer = QuantizedLinear.from_float(weight, None, 0.03, 2.0 ** -nx.LOGIT_FRAC_BITS)
            x_q = torch.randint(-128, 128, (case["tokens"], case["d_model"]), generator=generator)
            logits = nx.requantize(layer.accumulate(x_q), layer.multiplier, layer.shift, bits=16)
            gemm = (layer, x_q)
        else:
            logits = case_logits(case, generator)
        bias = (torch.randint(-3000, 3000, (spec.n_experts,), generator=generator)
                if spec.router == "sigmoid_bias" else None)
        routing = QuantizedRouter(spec, logits=None, score_bias=bias).route(logits)
        if bias is not None:
            await self.source("bias_write").send(
                bias_write(config).const({"expert": e, "bias": int(b)}).as_bits()
                for e, b in enumerate(bias.tolist()))
        lanes = config.router_lanes
        chunks = -(-case["d_model"] // lanes) if gemm else 0

        def words(row):
            row = row.tolist() + [0] * (chunks * lanes - len(row))
            return [row[c * lanes:(c + 1) * lanes] for c in range(chunks)]

        if gemm:
            await self.source("weights_write").send(
                router_weight_write(config).const({
                    "expert": e, "chunk": c, "data": word,
                    "multiplier": int(gemm[0].multiplier[e]), "shift": int(gemm[0].shift[e])})
                .as_bits() for e in range(spec.n_experts)
                for c, word in enumerate(words(gemm[0].weight[e])))
        command = router_command(config).const({
            "tokens": case["tokens"], "experts": spec.n_experts, "k": spec.k,
            "mode": RouterMode.named(spec.router), "groups": spec.n_groups,
            "group_size": spec.n_experts // spec.n_groups if spec.n_groups > 1 else 0,
            "topk_groups": spec.topk_groups, "compute": gemm is not None, "chunks": chunks})
        await self.source("cmd").send([command.as_bits()])
        await RisingEdge(dut.clk)
        assert not int(dut.error.value), f"the router refused {case}"
        if gemm:
            await self.source("tokens").send(
                router_token(config).const({"data": word}).as_bits()
                for token in range(case["tokens"]) for word in words(gemm[1][token]))
        else:
            await self.source("logits").send(
                LOGIT.onchip(config).const({"value": int(v)}).as_bits()
                for v in logits.reshape(-1).tolist())
        if int(dut.busy.value):
            await FallingEdge(dut.busy)
        perf = ROUTER_COUNTERS.from_bits(int(dut.perf.value))
        cycles, overflow = int(perf.busy_cycles), int(perf.dropped_tokens)
        capacity = config.dispatch_capacity
        mismatches = []
        expected = dispatch_table(routing, spec.n_experts, capacity)
        for expert, (tokens, gates) in enumerate(expected):
            count = await self.read("count_read", expert)
            if count != tokens.numel():
                mismatches.append(f"expert {expert}: {count} tokens, expected {tokens.numel()}")
                continue
            for slot, (token, gate) in enumerate(zip(tokens.tolist(), gates.tolist())):
                view = TOKEN_GATE.onchip(config).from_bits(
                    await self.read("table_read", expert * capacity + slot))
                entry = (int(view.token), int(view.gate))
                if entry != (token, gate):
                    mismatches.append(f"expert {expert} slot {slot}: (token, gate) {entry}, "
                                      f"expected {(token, gate)}")
        want_overflow = dispatch_overflow(routing, spec.n_experts, capacity)
        if overflow != want_overflow:
            mismatches.append(f"overflow {overflow}, expected {want_overflow}")
        return {**case, "cycles": cycles, "cycles_per_token": cycles / case["tokens"],
                "overflow": overflow, "mismatches": mismatches}


@cocotb.test()
async def dispatch_tables_bit_exact(dut):
    """Every case's dispatch table and overflow count equal the golden model's."""
    params = tb_params()
    config = preset(params["config"]).replace(**params.get("overrides", {}))
    rng = random.Random(cocotb.RANDOM_SEED)
    await start_clock(dut)
    for name in ("cmd", "logits", "bias_write", "tokens", "weights_write"):
        getattr(dut, f"{name}__valid").value = 0
    dut.table_read__en.value = 0
    dut.count_read__en.value = 0
    await reset(dut)

    def describe(case, report):
        return (f"{case['mode']} E={case['experts']} k={case['k']} T={case['tokens']} "
                f"{case['logits']}: {report['cycles']} cycles, overflow {report['overflow']}, "
                f"{len(report['mismatches'])} mismatches")

    await check_cases(dut, params["cases"],
                      lambda case: RouterTB(dut, config, rng, case.get("idle", 0.3)).run(case),
                      describe, "dispatch tables")
