"""Sub-byte code packing, and its unpacking inside an exported ONNX graph."""

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compress.share.packing import code_bits, pack_codes, packed_size, unpack_codes
from export.onnx import assert_parity, export_onnx


@pytest.mark.parametrize(("levels", "bits"), [(2, 1), (3, 2), (4, 2), (5, 4), (16, 4), (17, 8), (256, 8)])
def test_code_bits(levels, bits):
    assert code_bits(levels) == bits


@pytest.mark.parametrize("levels", [1, 257])
def test_code_bits_refuses_what_one_byte_cannot_hold(levels):
    with pytest.raises(ValueError, match="2..256"):
        code_bits(levels)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("count", [1, 7, 64, 1001])
def test_pack_unpack_round_trip(bits, count):
    codes = torch.randint(0, 1 << bits, (count,), generator=torch.Generator().manual_seed(count))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == packed_size(count, bits) == -(-count * bits // 8)
    assert torch.equal(unpack_codes(packed, count, bits), codes)


def test_pack_refuses_codes_that_do_not_fit():
    with pytest.raises(ValueError, match="0..3"):
        pack_codes(torch.tensor([0, 4]), 2)


class Unpack(nn.Module):
    """x * codes: the codes reach the output, so the exported graph must unpack them."""

    def __init__(self, codes: torch.Tensor, bits: int) -> None:
        super().__init__()
        self.count, self.bits = codes.numel(), bits
        self.register_buffer("packed", pack_codes(codes, bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * unpack_codes(self.packed, self.count, self.bits).to(x.dtype)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_unpacking_exports_as_ops_on_the_packed_bytes(bits, tmp_path):
    count = 999
    codes = torch.randint(0, 1 << bits, (count,), generator=torch.Generator().manual_seed(0))
    model = Unpack(codes, bits)
    path = export_onnx(model, (torch.ones(1, count),), tmp_path / "m.onnx")
    assert_parity(path, model, np.random.default_rng(0).normal(size=(3, count)).astype(np.float32), atol=0, rtol=0)
    graph = onnx.load(path).graph
    # torch.onnx did not fold the codes into a count-long constant: the file holds the packed bytes only
    sizes = sorted(int(np.prod(t.dims)) for t in graph.initializer)
    assert sizes[-1] == packed_size(count, bits)
    assert {"BitwiseAnd"} <= {n.op_type for n in graph.node}
