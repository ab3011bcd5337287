"""Example inputs that run a model's image and audio towers, placeholder tokens included.

Read off the model's forward signature and config, never its type. Each raw modality argument the
forward takes (pixel_values, image_pixel_values, input_features, audio_input_features,
input_values) gets a small tensor laid out from the config (channels and image size; mel bins and
frames; the strides of a waveform encoder): the first of a few layouts the model accepts, with the
modality's masks (all ones) only where it needs them. Where the modality has a placeholder token
id (image_token_id, audio_token_index, ...), each row of input_ids gets as many of them as the
modality's features fill: counted from the model's own `get_<modality>_features` (or, lacking
one, from the count transformers' placeholder check reports). The inputs are run at every width
(the same inputs must fit each); whatever cannot be built or run leaves the text-only inputs, and
with them muprewrite's clear error about the unused tower."""

from __future__ import annotations

import inspect
import logging
import math
import re
from dataclasses import dataclass, replace

import torch

from .configs import _attr, _is_config, _own_fields, _primary_hidden, _sub_config_names, _text_config
from .inputs import _token_id_fields
from .patterns import POSITIONS, SMALL_IMAGE

_log = logging.getLogger(__name__)

MODAL_ARGUMENT = re.compile(r"(?:(?P<modality>image|audio)_)?(?P<kind>pixel_values|input_features|input_values)")
KIND_MODALITY = {"pixel_values": "image", "input_features": "audio", "input_values": "audio"}
MASKS = {  # forward arguments that mask a modality's input (all ones: nothing is padding)
    "image": re.compile(r"(pixel|image)_(attention_)?mask"),
    "audio": re.compile(r"(input_features|feature|audio|audio_input_features)_(attention_)?mask|padding_mask"),
}
PLACEHOLDER = r"{modality}_token_(id|index)"
MEL_BINS = ("num_mel_bins", "feature_size", "input_dim", "input_size", "n_mels")
STRIDES = re.compile(r".*(stride|downsampling_ratio)s?")
WINDOW = re.compile(r"n_window|window_size|chunk_size")
MISMATCH = re.compile(r"tokens do not match\W+tokens\W+(\d+)\W+features\W+(\d+)")
FRAMES = 64  # mel frames of a clip whose encoder takes any length
WAVE_STEPS = 2  # encoder steps of a raw waveform
PROBE = 2  # placeholders per row when only the model's own check can say how many it needs
MAX_CHECKED_PARAMETERS = 300_000_000  # widths whose model is bigger are not built to check the inputs fit


@dataclass
class Modality:
    """One raw modality argument of the forward, and what was built for it."""

    argument: str
    modality: str  # "image" | "audio"
    inputs: dict  # the argument's tensor, and its masks where the model needs them
    token: int | None  # the placeholder token id, or None: the features are not placed in the text
    count: int = 0  # placeholders per row


def modal_inputs(make_model, text_inputs: dict, generator) -> dict:
    """Inputs to add to (or replace in) `text_inputs` so that the model's non-text towers run; {} when none."""
    try:
        with torch.random.fork_rng(devices=[]):  # building models must not move the caller's global seed
            return _modal_inputs(make_model, text_inputs, generator)
    except Exception as exc:  # noqa: BLE001  the model's own code: text-only inputs, muprewrite names the unused tower
        _log.debug("no modal inputs for %s: %s", getattr(make_model.config, "model_type", "?"), exc)
        return {}


def _modal_inputs(make_model, text_inputs: dict, generator) -> dict:
    parameters = inspect.signature(make_model.model_class.forward).parameters
    arguments = [name for name in parameters if MODAL_ARGUMENT.fullmatch(name)]
    if not arguments or "input_ids" not in text_inputs:
        return {}
    base, *others = make_model.rule.widths()
    model = _built(make_model, base)
    modalities = [_modality(model, make_model.config, a, parameters, text_inputs, generator) for a in arguments]
    inputs = _combined(make_model.config, text_inputs, modalities)
    for width in others:  # muprewrite runs the same inputs at every width: they must fit each
        if _parameters(make_model, width) <= MAX_CHECKED_PARAMETERS:  # a real config's target is not built
            _check_fits(_built(make_model, width), modalities, text_inputs, inputs)
    return {name: value for name, value in inputs.items() if value is not text_inputs.get(name)}


def _check_fits(model, modalities: list, text_inputs: dict, inputs: dict):
    """Raises unless the model fills as many placeholders as at the base width and runs on `inputs`."""
    for found in modalities:
        count = _placeholder_count(model, found, text_inputs)
        if count != found.count:
            raise ValueError(f"{found.argument} fills {count} placeholders per row here, {found.count} at the base width")
    _run(model, inputs)


def _parameters(make_model, width: int) -> int:
    """How many parameters the model at `width` has (counted on meta)."""
    with torch.device("meta"):
        return sum(p.numel() for p in make_model(width).parameters())


def _built(make_model, width: int):
    """The model at `width`, on CPU, in eval mode."""
    return make_model(width).eval()


def _run(model, inputs: dict):
    """The model's forward on `inputs`, without gradients."""
    with torch.no_grad():
        return model(**inputs)


# One modality argument ------------------------------------------------------------------------


def _modality(model, config, argument: str, parameters, text_inputs: dict, generator) -> Modality:
    """The first layout of `argument` (bare, then with its masks) whose features the model
    computes and whose forward runs, with its placeholder count."""
    match = MODAL_ARGUMENT.fullmatch(argument)
    modality = match["modality"] or KIND_MODALITY[match["kind"]]
    token = _placeholder_token(config, modality)
    rows = len(text_inputs["input_ids"])  # one image or audio clip per row
    failures = []
    for layout in _layouts(config, match["kind"], modality, rows, generator):
        masks = _masks(layout, modality, parameters)
        for inputs in [{argument: layout.tensor}] + ([{argument: layout.tensor, **masks}] if masks else []):
            found = Modality(argument, modality, inputs, token)
            try:
                found.count = _placeholder_count(model, found, text_inputs)
                _run(model, _combined(config, text_inputs, [found]))
                return found
            except Exception as exc:  # noqa: BLE001  the next layout
                _log.debug("%s %s: %s", argument, _shapes(inputs), exc)
                failures.append(exc)
    raise failures[-1] if failures else ValueError(f"no layout for {argument}")


def _shapes(inputs: dict) -> dict:
    """{name: shape} of some inputs, for the log."""
    return {name: tuple(value.shape) for name, value in inputs.items()}


@dataclass
class Layout:
    """A modality tensor and which of its axes is time (audio) or which is channels (images)."""

    tensor: torch.Tensor
    time_axis: int | None = None
    channel_axis: int | None = None


def _layouts(config, kind: str, modality: str, rows: int, generator) -> list:
    """Candidate tensors for one argument (`rows` images or clips), most common layout first."""
    if kind == "pixel_values":
        node = _modality_config(config, modality, ("image_size", "num_channels", "patch_size"))
        channels, height, width = _image_shape(node)
        image = torch.randn(rows, channels, height, width, generator=generator)
        layouts = [Layout(image, channel_axis=1), Layout(image.unsqueeze(1), channel_axis=2)]
        patch = _attr(node, "patch_size")
        if isinstance(patch, int) and height % patch == 0 and width % patch == 0:
            layouts.append(Layout(_flat_patches(image, patch)))
        return layouts
    node = _modality_config(config, modality, MEL_BINS + ("max_source_positions",))
    if kind == "input_values":
        samples = WAVE_STEPS * _hop_length(config)
        wave = torch.randn(rows, samples, generator=generator)
        return [Layout(wave, time_axis=1), Layout(wave.unsqueeze(1), time_axis=2)]
    bins = next((v for v in (_attr(node, n) for n in MEL_BINS) if isinstance(v, int)), 80)
    layouts = []
    for frames in dict.fromkeys(_frame_counts(node)):
        features = torch.randn(rows, bins, frames, generator=generator)
        layouts += [Layout(features, time_axis=2), Layout(features.transpose(1, 2).contiguous(), time_axis=1)]
    return layouts


def _modality_config(config, modality: str, fields: tuple):
    """The sub-config of a modality: `<modality>_config` (vision_config for images), else the first
    sub-config holding any of `fields`, else the config itself."""
    names = _sub_config_names(config)
    preferred = [n for n in names if n.startswith("vision" if modality == "image" else "audio")]
    for name in preferred + names:
        node = _attr(config, name)
        if any(_attr(node, f) is not None for f in fields):
            return node
    return config


def _image_shape(node) -> tuple:
    """(channels, height, width) of the images a (vision) config takes."""
    size = _attr(node, "image_size", SMALL_IMAGE)
    height, width = (size[0], size[-1]) if isinstance(size, (list, tuple)) else (size, size)
    return _attr(node, "num_channels", 3), height, width


def _flat_patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """Images as one row per patch (every image's patches in turn), each patch's channels, rows and
    columns flattened: the layout of a vision encoder fed by its processor's patches."""
    rows, channels, height, width = images.shape
    patches = images.reshape(rows, channels, height // patch, patch, width // patch, patch)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(-1, channels * patch * patch)


def _frame_counts(node) -> list:
    """Mel frame counts to try: what a whisper-style encoder insists on (its positions, after its
    stride-2 convolution), a short clip, then two of the encoder's windows (a chunked encoder
    takes whole chunks)."""
    positions = _attr(node, "max_source_positions")
    windows = [2 * v for n, v in _own_fields(node) if WINDOW.fullmatch(n) and isinstance(v, int) and v > 0]
    return ([2 * positions] if isinstance(positions, int) else []) + [FRAMES] + windows


def _hop_length(config) -> int:
    """Samples per encoder step of a waveform encoder: the largest product of a config's strides
    (conv_stride, downsampling_ratios, ...), sub-configs included; 1 when there are none."""
    products = [1]
    for node in [config] + [_attr(config, n) for n in _sub_config_names(config)]:
        for name, value in _own_fields(node) if _is_config(node) else ():
            if STRIDES.fullmatch(name) and isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
                products.append(math.prod(value))
    return max(products)


def _masks(layout: Layout, modality: str, parameters) -> dict:
    """All-ones masks for the modality's mask arguments of the forward, and image sizes."""
    shape = layout.tensor.shape
    masks = {}
    for name in parameters:
        if not MASKS[modality].fullmatch(name):
            continue
        if layout.time_axis is not None:
            masks[name] = torch.ones(shape[0], shape[layout.time_axis], dtype=torch.long)
        elif layout.channel_axis is not None:
            masks[name] = torch.ones(shape[:layout.channel_axis] + shape[layout.channel_axis + 1:], dtype=torch.bool)
    if modality == "image" and "image_sizes" in parameters:
        masks["image_sizes"] = torch.tensor([list(shape[-2:])] * shape[0])
    return masks


# Placeholder tokens ----------------------------------------------------------------------------


def _placeholder_token(config, modality: str):
    """The id of the token that stands for the modality's features in input_ids (the shallowest
    `<modality>_token_id` / `_token_index` field), or None."""
    fields = sorted((len(path), value) for path, value in _token_id_fields(config)
                    if re.fullmatch(PLACEHOLDER.format(modality=modality), path[-1]) and isinstance(value, int))
    return fields[0][1] if fields else None


def _placeholder_count(model, found: Modality, text_inputs: dict) -> int:
    """How many placeholder tokens each row needs (0 without a placeholder token): as many as the
    features the model's own `get_<modality>_features` returns, or, where it has none (or that
    needs the placeholders already), as many as transformers' placeholder check reports."""
    if found.token is None:
        return 0
    function = _features_function(model, found)
    try:
        if function is None:
            _run(model, _combined(model.config, text_inputs, [replace(found, count=PROBE)]))
            return PROBE
        accepted = inspect.signature(function).parameters
        with torch.no_grad():
            features = function(**{k: v for k, v in {**text_inputs, **found.inputs}.items() if k in accepted})
    except Exception as exc:  # noqa: BLE001  "... tokens do not match, tokens: 0, features: 128"
        match = MISMATCH.search(str(exc))
        if match is None:
            raise
        tokens = int(match[2])
    else:
        hidden = _text_width(model)
        tokens = sum(t.numel() // hidden for t in _feature_tensors(features, hidden))
    rows = len(text_inputs["input_ids"])
    if tokens == 0 or tokens % rows:
        raise ValueError(f"{tokens} {found.modality} features for {rows} rows")
    return tokens // rows


def _text_width(model) -> int:
    """The hidden size of the model's text part: the width the features are placed at."""
    hidden = _primary_hidden(_text_config(model.config))
    return hidden[1] if hidden and isinstance(hidden[1], int) else model.get_input_embeddings().embedding_dim


def _features_function(model, found: Modality):
    """`get_<modality>_features` of the model or a submodule: the one that takes the most of the
    modality's inputs by name (the argument among them), the shallowest of those."""
    name, best, named = f"get_{found.modality}_features", None, 0
    for module in model.modules():
        function = getattr(module, name, None)
        parameters = inspect.signature(function).parameters if callable(function) else {}
        taken = sum(n in parameters for n in found.inputs)
        if found.argument in parameters and taken > named:
            best, named = function, taken
    return best


def _feature_tensors(features, hidden: int) -> list:
    """The text-width tensors in what a get_*_features returns: its pooler_output (transformers 5:
    the projected features), a tensor, or a tuple / list of them."""
    pooled = getattr(features, "pooler_output", None)
    if pooled is not None:
        features = pooled
    elif not isinstance(features, (torch.Tensor, list, tuple)):
        features = features[0]
    tensors = [features] if isinstance(features, torch.Tensor) else [t for t in features if isinstance(t, torch.Tensor)]
    if not tensors or any(t.shape[-1] != hidden for t in tensors):
        raise ValueError(f"features are not {hidden} wide: {[tuple(t.shape) for t in tensors]}")
    return tensors


def _combined(config, text_inputs: dict, modalities: list) -> dict:
    """Text inputs with every modality's inputs, each row of input_ids led by its placeholders."""
    inputs = dict(text_inputs)
    for found in modalities:
        inputs.update(found.inputs)
    ids = text_inputs["input_ids"]
    leading = [torch.full((len(ids), m.count), m.token) for m in modalities if m.token is not None and m.count]
    if leading:
        room = _max_positions(config) - sum(t.shape[1] for t in leading)
        if room < 1:
            raise ValueError(f"{sum(t.shape[1] for t in leading)} placeholders leave no room for text")
        inputs["input_ids"] = torch.cat(leading + [ids[:, :room]], dim=1)
    return inputs


def _max_positions(config) -> int:
    """The longest sequence the text part takes (its smallest positions field); unlimited without one."""
    text = _text_config(config)
    limits = [v for n, v in _own_fields(text) if re.fullmatch(POSITIONS, n) and isinstance(v, int) and v > 0]
    return min(limits, default=1 << 30)
