"""Hand-derived NumPy forward/backward pairs (cs231n convention). NumPy only: this is the code under test.

Ops are found by name: ``NAME_forward`` / ``NAME_backward`` (see docs/op_contract.md).

    gates           add_gate, multiply_gate, max_gate, sigmoid_neuron, chain_rule_example
    layers          affine, linear_column, relu, sigmoid, tanh, softmax, log_softmax
    losses          softmax_cross_entropy, mse, svm_hinge
    regularization  l2_regularization, dropout
    conv            conv2d, max_pool2d, avg_pool2d
    rnn             rnn_step, rnn, rnn_softmax_sequence, lstm_step, lstm
    norm            batchnorm, layernorm, spatial_batchnorm, spatial_groupnorm, batchnorm_running
    temporal        embedding, temporal_affine, temporal_softmax_loss
    nets            mlp_sigmoid_mse, two_layer_net
    linear          linear_svm, linear_softmax (assignment 1's linear classifiers)
"""
from .conv import *  # noqa: F401,F403
from .gates import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .linear import *  # noqa: F401,F403
from .losses import *  # noqa: F401,F403
from .nets import *  # noqa: F401,F403
from .norm import *  # noqa: F401,F403
from .regularization import *  # noqa: F401,F403
from .rnn import *  # noqa: F401,F403
from .temporal import *  # noqa: F401,F403
