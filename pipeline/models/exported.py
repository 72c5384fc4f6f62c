"""A model as the registry stores it: a torch.export program of its outputs as a plain tuple
(`AsTuple`), batch dimension dynamic, as MLflow's pt2 format writes it. Loading onto a GPU goes
through torch's `move_to_device_pass`: an exported graph's weights and the devices written into
its ops cannot be moved with `.to()` (MLflow refuses to load such a model on another device)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.export import Dim
from torch.export.passes import move_to_device_pass
from torch.utils import _pytree as pytree

from pipeline.models.output import AsTuple


def export(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """The program the registry holds: the model's outputs as a tuple, any batch size."""
    return torch.export.export(AsTuple(model.eval()), (example,), dynamic_shapes=({0: Dim.AUTO},))


def save(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    torch.export.save(export(model, example), str(path))
    return Path(path)


def load(path: Path, device: torch.device) -> nn.Module:
    """A saved program as a module whose weights, buffers and ops all run on device."""
    module = move_to_device_pass(torch.export.load(str(path)), device).module()  # on CPU too: one path, tested
    return _without_dtype_asserts(module)


def without_head(module: nn.Module) -> nn.Module:
    """A loaded program without its defect-head map (the 4-D output after ModelOutput's first
    four), the head's ops dropped with it as dead code: a version whose chosen score does not read
    the head scores without paying for it (the head costs about as much as one member). Outputs
    keep their order, so ModelOutput.of reads the rest as before; a program without a head is
    returned as it is."""
    graph = module.graph
    output = next(node for node in graph.nodes if node.op == "output")
    outputs = list(output.args[0])
    kept = [node for k, node in enumerate(outputs) if k < 4 or node.meta["val"].ndim != 4]
    if len(kept) == len(outputs):
        return module
    output.args = (tuple(kept),)
    graph.eliminate_dead_code()
    # the program returns its outputs through a pytree spec: it must count one output fewer
    codegen = graph._codegen
    codegen.pytree_info = codegen.pytree_info._replace(out_spec=pytree.tree_structure(tuple(kept)))
    module.recompile()
    return module


def _without_dtype_asserts(module: nn.Module) -> nn.Module:
    """Drop export's dtype assertions. A `.float()` that was a no-op at export time (the VQ-VAE's
    codebook distances, kept in float32) is recorded as "this tensor is float32"; under bf16
    autocast it is bf16 there, and the cast after the assertion is what should then run."""
    for graph_module in module.modules():
        if isinstance(graph_module, torch.fx.GraphModule):
            for node in list(graph_module.graph.nodes):
                if node.target is torch.ops.aten._assert_tensor_metadata.default and not node.users:
                    graph_module.graph.erase_node(node)
            graph_module.recompile()
    return module
