"""The model classes of models_correct.py with the mistakes students make when they wire layers
together (the layers themselves, from layers_correct.py, are right — but one):

    gradaudit audit examples/cs231n/models_buggy.py --convention cs231n

- TwoLayerNet: the regularisation term is missing from grads['W1'] (a wiring bug: its layers pass);
- FullyConnectedNet with batch norm: dgamma and dbeta stored under each other's name, and the
  batch norm layers never switched to test mode (test-time scores use the batch statistics);
  plain, with layer norm and with dropout it is right;
- CaptioningRNN: this file's own word_embedding_backward drops repeated words (`dW[x] += dout`),
  so the model is wrong because a layer is.
"""
import numpy as np

from layer_utils import *  # noqa: F401,F403


def word_embedding_backward(dout, cache):
    x, W_shape, W_dtype = cache
    dW = np.zeros(W_shape, dtype=W_dtype)
    dW[x] += dout  # BUG: fancy-index += keeps one update per repeated word: np.add.at(dW, x, dout)
    return dW


class TwoLayerNet(object):
    def __init__(self, input_dim=3 * 32 * 32, hidden_dim=100, num_classes=10, weight_scale=1e-3, reg=0.0):
        self.params = {}
        self.reg = reg
        self.params['W1'] = weight_scale * np.random.randn(input_dim, hidden_dim)
        self.params['b1'] = np.zeros(hidden_dim)
        self.params['W2'] = weight_scale * np.random.randn(hidden_dim, num_classes)
        self.params['b2'] = np.zeros(num_classes)

    def loss(self, X, y=None):
        W1, b1, W2, b2 = self.params['W1'], self.params['b1'], self.params['W2'], self.params['b2']
        h, cache1 = affine_relu_forward(X, W1, b1)
        scores, cache2 = affine_forward(h, W2, b2)
        if y is None:
            return scores

        grads = {}
        loss, dscores = softmax_loss(scores, y)
        loss += 0.5 * self.reg * (np.sum(W1 * W1) + np.sum(W2 * W2))
        dh, grads['W2'], grads['b2'] = affine_backward(dscores, cache2)
        grads['W2'] += self.reg * W2
        _, grads['W1'], grads['b1'] = affine_relu_backward(dh, cache1)  # BUG: no + self.reg * W1
        return loss, grads


class FullyConnectedNet(object):
    def __init__(self, hidden_dims, input_dim=3 * 32 * 32, num_classes=10, dropout_keep_ratio=1,
                 normalization=None, reg=0.0, weight_scale=1e-2, dtype=np.float32, seed=None):
        self.normalization = normalization
        self.use_dropout = dropout_keep_ratio != 1
        self.reg = reg
        self.num_layers = 1 + len(hidden_dims)
        self.dtype = dtype
        self.params = {}

        dims = [input_dim] + hidden_dims + [num_classes]
        for i in range(self.num_layers):
            self.params['W%d' % (i + 1)] = weight_scale * np.random.randn(dims[i], dims[i + 1])
            self.params['b%d' % (i + 1)] = np.zeros(dims[i + 1])
            if self.normalization is not None and i < self.num_layers - 1:
                self.params['gamma%d' % (i + 1)] = np.ones(dims[i + 1])
                self.params['beta%d' % (i + 1)] = np.zeros(dims[i + 1])

        self.dropout_param = {}
        if self.use_dropout:
            self.dropout_param = {'mode': 'train', 'p': dropout_keep_ratio}
            if seed is not None:
                self.dropout_param['seed'] = seed

        self.bn_params = []
        if self.normalization == 'batchnorm':
            self.bn_params = [{'mode': 'train'} for i in range(self.num_layers - 1)]
        if self.normalization == 'layernorm':
            self.bn_params = [{} for i in range(self.num_layers - 1)]

        for k, v in self.params.items():
            self.params[k] = v.astype(dtype)

    def loss(self, X, y=None):
        X = X.astype(self.dtype)
        mode = 'test' if y is None else 'train'
        if self.use_dropout:
            self.dropout_param['mode'] = mode
        # BUG: the batch norm layers' bn_param['mode'] is never set: they stay in 'train'

        caches = []
        out = X
        for i in range(1, self.num_layers):
            out, fc_cache = affine_forward(out, self.params['W%d' % i], self.params['b%d' % i])
            norm_cache = None
            if self.normalization == 'batchnorm':
                out, norm_cache = batchnorm_forward(out, self.params['gamma%d' % i], self.params['beta%d' % i],
                                                    self.bn_params[i - 1])
            elif self.normalization == 'layernorm':
                out, norm_cache = layernorm_forward(out, self.params['gamma%d' % i], self.params['beta%d' % i],
                                                    self.bn_params[i - 1])
            out, relu_cache = relu_forward(out)
            drop_cache = None
            if self.use_dropout:
                out, drop_cache = dropout_forward(out, self.dropout_param)
            caches.append((fc_cache, norm_cache, relu_cache, drop_cache))
        L = self.num_layers
        scores, last_cache = affine_forward(out, self.params['W%d' % L], self.params['b%d' % L])
        if mode == 'test':
            return scores

        grads = {}
        loss, dscores = softmax_loss(scores, y)
        dout, grads['W%d' % L], grads['b%d' % L] = affine_backward(dscores, last_cache)
        for i in reversed(range(1, L)):
            fc_cache, norm_cache, relu_cache, drop_cache = caches[i - 1]
            if self.use_dropout:
                dout = dropout_backward(dout, drop_cache)
            dout = relu_backward(dout, relu_cache)
            if self.normalization == 'batchnorm':
                # BUG: batchnorm_backward returns (dx, dgamma, dbeta)
                dout, grads['beta%d' % i], grads['gamma%d' % i] = batchnorm_backward(dout, norm_cache)
            elif self.normalization == 'layernorm':
                dout, grads['gamma%d' % i], grads['beta%d' % i] = layernorm_backward(dout, norm_cache)
            dout, grads['W%d' % i], grads['b%d' % i] = affine_backward(dout, fc_cache)

        for i in range(1, L + 1):
            W = self.params['W%d' % i]
            loss += 0.5 * self.reg * np.sum(W * W)
            grads['W%d' % i] += self.reg * W
        return loss, grads


class CaptioningRNN(object):
    def __init__(self, word_to_idx, input_dim=512, wordvec_dim=128, hidden_dim=128, cell_type='rnn',
                 dtype=np.float32):
        if cell_type not in {'rnn', 'lstm'}:
            raise ValueError('Invalid cell_type "%s"' % cell_type)
        self.cell_type = cell_type
        self.dtype = dtype
        self.word_to_idx = word_to_idx
        self.params = {}
        vocab_size = len(word_to_idx)
        self._null = word_to_idx['<NULL>']

        self.params['W_embed'] = np.random.randn(vocab_size, wordvec_dim) / 100
        self.params['W_proj'] = np.random.randn(input_dim, hidden_dim) / np.sqrt(input_dim)
        self.params['b_proj'] = np.zeros(hidden_dim)
        dim_mul = {'lstm': 4, 'rnn': 1}[cell_type]
        self.params['Wx'] = np.random.randn(wordvec_dim, dim_mul * hidden_dim) / np.sqrt(wordvec_dim)
        self.params['Wh'] = np.random.randn(hidden_dim, dim_mul * hidden_dim) / np.sqrt(hidden_dim)
        self.params['b'] = np.zeros(dim_mul * hidden_dim)
        self.params['W_vocab'] = np.random.randn(hidden_dim, vocab_size) / np.sqrt(hidden_dim)
        self.params['b_vocab'] = np.zeros(vocab_size)
        for k, v in self.params.items():
            self.params[k] = v.astype(self.dtype)

    def loss(self, features, captions):
        captions_in, captions_out = captions[:, :-1], captions[:, 1:]
        mask = (captions_out != self._null)
        h0, cache_h0 = affine_forward(features, self.params['W_proj'], self.params['b_proj'])
        x, cache_embed = word_embedding_forward(captions_in, self.params['W_embed'])
        forward, backward = (rnn_forward, rnn_backward) if self.cell_type == 'rnn' else (lstm_forward, lstm_backward)
        h, cache_rnn = forward(x, h0, self.params['Wx'], self.params['Wh'], self.params['b'])
        scores, cache_scores = temporal_affine_forward(h, self.params['W_vocab'], self.params['b_vocab'])
        loss, dscores = temporal_softmax_loss(scores, captions_out, mask)

        grads = {}
        dh, grads['W_vocab'], grads['b_vocab'] = temporal_affine_backward(dscores, cache_scores)
        dx, dh0, grads['Wx'], grads['Wh'], grads['b'] = backward(dh, cache_rnn)
        grads['W_embed'] = word_embedding_backward(dx, cache_embed)
        _, grads['W_proj'], grads['b_proj'] = affine_backward(dh0, cache_h0)
        return loss, grads
