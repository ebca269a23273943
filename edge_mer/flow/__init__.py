"""The flow stage: onset/apex frames -> motion (u, v, strain) and texture tensors.

* ``edge_mer.flow.base``: the one interface the device loop calls (``FlowStage``);
* ``edge_mer.flow.stage``: the stages by name (``make_stage``: reference, OpenCV or CUDA);
* ``edge_mer.flow.reference``: the numpy TV-L1 that specifies the algorithm;
* ``edge_mer.flow.opencv``: OpenCV's TV-L1 and DIS, and optical strain;
* ``edge_mer.flow.normalise``: the fixed normalisation of the model inputs;
* ``edge_mer/flow/kernels/tvl1.cu`` and ``edge_mer.flow.cuda``: the fused CUDA kernels, step for
  step the reference, and their driver;
* ``edge_mer.flow.images``: the flow between two image files (``edge-mer flow``);
* ``edge_mer.flow.pairs``: image pairs with a known flow (tests, benchmark).

Nothing here imports torch. This package file imports nothing, so that the CLI
can register its commands without loading OpenCV.
"""

# the flow stages by name (edge_mer.flow.stage.make_stage)
STAGES = ("reference", "opencv", "opencv-tvl1", "opencv-dis", "cuda")
