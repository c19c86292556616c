"""The pass manager: context scoping, typed config keys, instruments, error reporting,
and the one-call API composed of the same passes."""

from __future__ import annotations

import pytest

from onnx_hwprune import Module, Pass, PassContext, Sequential, TimingInstrument, UserError, prune
from onnx_hwprune.frontends.onnx import load_graph
from onnx_hwprune.passes._infra import PassError
from onnx_hwprune.passes.analysis.channel_groups import ChannelGroupAnalysis
from onnx_hwprune.passes.analysis.importance import ChannelImportance
from onnx_hwprune.passes.plan.baselines import GlobalPlanner, UniformPlanner
from onnx_hwprune.passes.transform.remove_channels import RemoveChannels
from onnx_hwprune.testing.families import FAMILIES


@pytest.fixture(scope="module")
def module() -> Module:
    return Module(load_graph(FAMILIES["resnet_basic"]()))


def test_context_is_scoped():
    assert PassContext.current().seed == 0
    with PassContext(seed=7) as ctx:
        assert PassContext.current() is ctx
        with PassContext(seed=9):
            assert PassContext.current().seed == 9
        assert PassContext.current().seed == 7
    assert PassContext.current().seed == 0


def test_unknown_config_key_lists_candidates():
    with pytest.raises(UserError, match="plan.min_channels"):
        PassContext(config={"plan.min_channel": 2})
    with pytest.raises(UserError, match="must be int"):
        PassContext(config={"plan.min_channels": 2.5})


def test_pipeline_returns_new_modules_and_leaves_input_alone(module):
    nodes_before = [(n.name, [t.shape for t in n.outputs]) for n in module.graph.nodes]
    pipeline = Sequential(
        [ChannelGroupAnalysis(), ChannelImportance("l2"), GlobalPlanner(0.4), RemoveChannels()]
    )
    timing = TimingInstrument()
    with PassContext(instruments=[timing], config={"plan.min_channels": 4}):
        out = pipeline(module)
    assert out is not module and out.graph is not module.graph
    assert [(n.name, [t.shape for t in n.outputs]) for n in module.graph.nodes] == nodes_before
    assert [name for name, _ in timing.timings] == [
        "ChannelGroupAnalysis",
        "ChannelImportance",
        "GlobalPlanner",
        "RemoveChannels",
        "Sequential",
    ]
    assert all(len(gp.keep) >= min(4, gp.size) for gp in out.plan.groups.values())


def test_passes_check_their_preconditions(module):
    with pytest.raises(PassError, match="ChannelGroupAnalysis"):
        UniformPlanner(0.3)(module)
    with pytest.raises(PassError, match="channel groups and a plan"):
        RemoveChannels()(module)


class _Broken(Pass):
    name = "Broken"

    def run(self, mod, ctx):
        raise ZeroDivisionError("boom")


class _Lazy(Pass):
    name = "Lazy"

    def run(self, mod, ctx):
        return mod


def test_sequential_error_names_the_passes_already_run(module):
    with pytest.raises(PassError, match=r"Broken failed after \[ChannelGroupAnalysis\]"):
        Sequential([ChannelGroupAnalysis(), _Broken()])(module)


def test_a_pass_must_return_a_new_module(module):
    with pytest.raises(PassError, match="returned its input"):
        _Lazy()(module)


def test_ratio_is_validated():
    with pytest.raises(UserError, match="ratio"):
        UniformPlanner(1.0)


def test_prune_api_accepts_a_model_proto_and_does_not_modify_it():
    model = FAMILIES["mobilenetv2"]()
    before = model.SerializeToString()
    result = prune(model, ratio=0.5, method="global", criterion="bn")
    assert model.SerializeToString() == before
    assert result.report["network"]["macs"][1] < result.report["network"]["macs"][0]
    assert result.plan.method == "global"


class _BreakConv(Pass):
    """A buggy rewrite: the first Conv reads a tensor that nothing produces."""

    name = "BreakConv"

    def run(self, mod: Module, ctx: PassContext) -> Module:
        import onnx_graphsurgeon as gs

        graph = mod.graph.copy()
        conv = next(n for n in graph.nodes if n.op == "Conv")
        conv.inputs[0] = gs.Variable("dangling", conv.inputs[0].dtype, conv.inputs[0].shape)
        return mod.replace(graph=graph)


def test_verify_each_pass_names_the_pass_that_broke_the_model(module):
    pipeline = Sequential([ChannelGroupAnalysis(), _BreakConv()])
    pipeline(module)  # without the verifier the bug goes unnoticed
    with pytest.raises(PassError, match="invalid after pass BreakConv"):
        pipeline(module, PassContext(config={"verify.each_pass": True}))
    checked = Sequential([ChannelGroupAnalysis(), ChannelImportance("l1"), GlobalPlanner(0.3)])
    checked(module, PassContext(config={"verify.each_pass": True}))
