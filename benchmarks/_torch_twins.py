"""PyTorch twins of kerasae presets for the throughput benchmarks (torch is a benchmark-only extra).

Each twin has the preset's layers, widths, initialization (Keras' defaults: Glorot uniform kernels,
zero biases, GroupNorm gamma 1 / beta 0 with epsilon 1e-3) and loss, written the way a PyTorch user
would (NCHW tensors, `torch.nn` modules, eager). `forward(x, eps=None)` returns the batch-mean negative
ELBO; `eps` [B, latent_dim] is the reparameterization noise (None: drawn), so a test can give both the same.
Stride-2 layers: by default as PyTorch users write them (padding=1, and output_padding=1 for the transposed
convs): the same shapes, weights and FLOPs as Keras' "same" padding, on a sampling grid shifted by one pixel.
With `keras_padding=True` they reproduce Keras' padding exactly (a zero row and column at the bottom and right
before each stride-2 conv, a crop after each stride-2 transposed conv), so the twin computes the Keras model's
function and tests/test_torch_twins.py can compare losses and gradients; those pads and crops are copies that
made the torch epochs 10-30% slower in one measurement, so the timed twins use the default.

- `mlp_vae`: vae-mlp (784-512-256-32, Bernoulli), images [B, 784].
- `conv_vae`: vae-conv (conv 32-64 stride 2, 32-D latent, Bernoulli), images [B, 1, 28, 28].
- `resnet_vae`: vae-resnet-32 (stem, pre-activation blocks 32-64-128 with GroupNorm, stride-2 convs
  down to 8x8, 128-D latent, mirrored decoder with stride-2 transposed convs, discretized logistic
  over 8-bit pixels with a learned per-pixel scale), images [B, 3, 32, 32] on the 1/255 grid.
"""

import math

GROUPS = 8
NORM_EPSILON = 1e-3
MIN_SCALE = 1e-3
INIT_SCALE = 0.1


def _glorot(nn, module):
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def _negative_elbo(torch, h, latent_dim, decoder, log_likelihood, eps):
    """Split the encoder's output into mean / log-variance, sample z, decode, return the batch-mean -ELBO."""
    mean, log_var = h[:, :latent_dim], h[:, latent_dim:]
    eps = torch.randn_like(mean) if eps is None else eps
    z = mean + torch.exp(0.5 * log_var) * eps  # reparameterized
    kl = 0.5 * (torch.exp(log_var) + mean * mean - 1.0 - log_var).sum(1)  # KL(N(mean, var) || N(0, I))
    return (kl - log_likelihood(decoder(z))).mean()


def mlp_vae(torch, hidden_units=(512, 256), latent_dim=32, pixels=784):
    nn, functional = torch.nn, torch.nn.functional

    def mlp(sizes):
        layers = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        return _glorot(nn, nn.Sequential(*layers))

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = mlp([pixels, *hidden_units, 2 * latent_dim])
            self.decoder = mlp([latent_dim, *reversed(hidden_units), pixels])

        def forward(self, x, eps=None):
            def log_likelihood(logits):  # Bernoulli(sigmoid(logits)), summed over pixels
                return -functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
            return _negative_elbo(torch, self.encoder(x), latent_dim, self.decoder, log_likelihood, eps)

    return VAE()


def _down(nn, n_in, n_out, keras_padding):
    """A stride-2 conv3x3, H -> H / 2 (exactly Keras' Conv2D(n_out, 3, strides=2, padding="same") if keras_padding)."""
    if not keras_padding:
        return [nn.Conv2d(n_in, n_out, 3, stride=2, padding=1)]
    return [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(n_in, n_out, 3, stride=2)]


def _up(nn, n_in, n_out, keras_padding):
    """A stride-2 transposed conv3x3, H -> 2H (exactly Keras' Conv2DTranspose: the full 2H + 1 output, cropped)."""
    if not keras_padding:
        return [nn.ConvTranspose2d(n_in, n_out, 3, stride=2, padding=1, output_padding=1)]

    class Crop(nn.Module):
        def forward(self, x):
            return x[:, :, :-1, :-1]

    return [nn.ConvTranspose2d(n_in, n_out, 3, stride=2), Crop()]


def conv_vae(torch, filters=(32, 64), latent_dim=32, image_shape=(1, 28, 28), keras_padding=False):
    nn, functional = torch.nn, torch.nn.functional
    channels, height, width = image_shape
    h0, w0 = height // 2 ** len(filters), width // 2 ** len(filters)
    encoder, n_in = [], channels
    for f in filters:
        encoder += [*_down(nn, n_in, f, keras_padding), nn.ReLU()]
        n_in = f
    encoder += [nn.Flatten(), nn.Linear(filters[-1] * h0 * w0, 2 * latent_dim)]
    decoder = [nn.Linear(latent_dim, filters[-1] * h0 * w0), nn.ReLU(), nn.Unflatten(1, (filters[-1], h0, w0))]
    n_in = filters[-1]
    for f in reversed(filters):  # as Keras' conv decoder: the top width first, then down to filters[0]
        decoder += [*_up(nn, n_in, f, keras_padding), nn.ReLU()]
        n_in = f
    decoder.append(nn.Conv2d(filters[0], channels, 3, padding=1))

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = _glorot(nn, nn.Sequential(*encoder))
            self.decoder = _glorot(nn, nn.Sequential(*decoder))

        def forward(self, x, eps=None):
            def log_likelihood(logits):
                return -functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum((1, 2, 3))
            return _negative_elbo(torch, self.encoder(x), latent_dim, self.decoder, log_likelihood, eps)

    return VAE()


def discretized_logistic_log_prob(torch, x, loc, scale):
    """log p(x) of 8-bit pixels x under a logistic(loc, scale) binned at k/255 (edge bins open), summed per image.

    The same closed form as kerasae.losses.discretized_logistic_log_prob (no CDF subtraction).
    """
    softplus = torch.nn.functional.softplus
    k = torch.round(x * 255.0)
    inv = 1.0 / (255.0 * scale)
    centre = (k - 255.0 * loc) * inv
    a, b = centre + 0.5 * inv, centre - 0.5 * inv
    log_width = torch.log(-torch.expm1(-inv))
    log_p = (torch.where(k < 255.0, -softplus(-a), 0.0) + torch.where(k > 0.0, -softplus(b), 0.0)
             + torch.where((k > 0.0) & (k < 255.0), log_width, 0.0))
    return log_p.sum((1, 2, 3))


def resnet_vae(torch, filters=(32, 64, 128), latent_dim=128, image_shape=(3, 32, 32), blocks_per_stage=1,
               keras_padding=False):
    nn = torch.nn
    channels, height, width = image_shape
    scale = 2 ** (len(filters) - 1)
    h0, w0 = height // scale, width // scale

    def norm_act(c):
        return [nn.GroupNorm(min(GROUPS, c), c, eps=NORM_EPSILON), nn.ReLU()]

    class Block(nn.Module):  # x + F(x), F = norm, ReLU, conv3x3, norm, ReLU, conv3x3
        def __init__(self, c):
            super().__init__()
            self.f = nn.Sequential(*norm_act(c), nn.Conv2d(c, c, 3, padding=1), *norm_act(c),
                                   nn.Conv2d(c, c, 3, padding=1))

        def forward(self, x):
            return x + self.f(x)

    encoder = [nn.Conv2d(channels, filters[0], 3, padding=1)]
    for s, f in enumerate(filters):
        encoder += [Block(f) for _ in range(blocks_per_stage)]
        if s + 1 < len(filters):
            encoder += _down(nn, f, filters[s + 1], keras_padding)
    encoder += [*norm_act(filters[-1]), nn.Flatten(), nn.Linear(filters[-1] * h0 * w0, 2 * latent_dim)]
    decoder = [nn.Linear(latent_dim, filters[-1] * h0 * w0), nn.Unflatten(1, (filters[-1], h0, w0))]
    for s in reversed(range(len(filters))):
        decoder += [Block(filters[s]) for _ in range(blocks_per_stage)]
        if s:
            decoder += _up(nn, filters[s], filters[s - 1], keras_padding)
    decoder += [*norm_act(filters[0]), nn.Conv2d(filters[0], channels, 3, padding=1)]

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = _glorot(nn, nn.Sequential(*encoder))
            self.decoder = _glorot(nn, nn.Sequential(*decoder))
            # per-pixel logistic scale = softplus(raw) + MIN_SCALE, starting at INIT_SCALE
            self.raw_scale = nn.Parameter(torch.full(image_shape, math.log(math.expm1(INIT_SCALE - MIN_SCALE))))

        def forward(self, x, eps=None):
            scale = torch.nn.functional.softplus(self.raw_scale) + MIN_SCALE

            def log_likelihood(logits):
                return discretized_logistic_log_prob(torch, x, torch.sigmoid(logits), scale)
            return _negative_elbo(torch, self.encoder(x), latent_dim, self.decoder, log_likelihood, eps)

    return VAE()
