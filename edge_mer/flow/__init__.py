"""The flow stage: onset/apex frames -> motion (u, v, strain) and texture tensors.

* ``edge_mer.flow.reference``: the numpy TV-L1 that specifies the algorithm;
* ``edge_mer.flow.stage``: the one interface the device loop calls (``make_stage``:
  reference, OpenCV or CUDA);
* ``edge_mer/flow/kernels/tvl1.cu``: the fused CUDA kernels, step for step the reference;
* ``edge_mer.flow.command``: ``edge-mer flow``;
* ``edge_mer.flow.pairs``: image pairs with a known flow (tests, benchmark).

Nothing here imports torch. This package file imports nothing, so that the CLI
can register ``edge-mer flow`` without loading OpenCV.
"""
