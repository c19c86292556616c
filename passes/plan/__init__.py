"""Planning: deciding which channels of each group to keep."""

from onnx_hwprune.passes.plan.plan import PLAN_SCHEMA, PLAN_VERSION, GroupPlan, Plan

__all__ = ["GroupPlan", "Plan", "PLAN_SCHEMA", "PLAN_VERSION"]
