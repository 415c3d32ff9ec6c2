"""A student's fc_net.py inside the assignment's package layout, importing its layers relatively:

    gradaudit audit examples/cs231n/assignment2/cs231n/classifiers/fc_net.py --convention cs231n
"""
import numpy as np

from ..layers import *  # noqa: F401,F403
from ..layer_utils import *  # noqa: F401,F403


class TwoLayerNet(object):
    def __init__(self, input_dim=3 * 32 * 32, hidden_dim=100, num_classes=10, weight_scale=1e-3, reg=0.0):
        self.params = {}
        self.reg = reg
        self.params['W1'] = np.random.normal(0, weight_scale, (input_dim, hidden_dim))
        self.params['b1'] = np.zeros(hidden_dim)
        self.params['W2'] = np.random.normal(0, weight_scale, (hidden_dim, num_classes))
        self.params['b2'] = np.zeros(num_classes)

    def loss(self, X, y=None):
        hidden, hidden_cache = affine_relu_forward(X, self.params['W1'], self.params['b1'])
        scores, scores_cache = affine_forward(hidden, self.params['W2'], self.params['b2'])
        if y is None:
            return scores

        loss, grads = 0, {}
        loss, dscores = softmax_loss(scores, y)
        loss += 0.5 * self.reg * (np.sum(self.params['W1'] ** 2) + np.sum(self.params['W2'] ** 2))
        dhidden, grads['W2'], grads['b2'] = affine_backward(dscores, scores_cache)
        _, grads['W1'], grads['b1'] = affine_relu_backward(dhidden, hidden_cache)
        grads['W1'] += self.reg * self.params['W1']
        grads['W2'] += self.reg * self.params['W2']
        return loss, grads
