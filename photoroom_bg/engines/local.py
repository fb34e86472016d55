"""The offline engine: background removal on this machine, no network, no credits.

:class:`LocalEngine` runs a U²-Net-family salient-object model with onnxruntime and answers
like ``/v1/segment`` does for the same :class:`~photoroom_bg.SegmentOptions`. Install it with
``pip install "photoroom-bg[local]"``; the default model (``u2netp``) ships inside the package.
"""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any

from photoroom_bg.errors import ConfigurationError, ValidationError
from photoroom_bg.models import ImageResult
from photoroom_bg.options import SegmentOptions

if TYPE_CHECKING:
    from ._local_imaging import RenderPlan
    from ._onnx_models import ModelSpec

__all__ = ["LocalEngine"]

#: Accelerators used, in this order, when onnxruntime offers them; the CPU is always last.
PREFERRED_PROVIDERS = (
    "CUDAExecutionProvider",
    "ROCMExecutionProvider",
    "DmlExecutionProvider",
    "CoreMLExecutionProvider",
)
_MISSING_EXTRA = "LocalEngine needs the local extra: pip install 'photoroom-bg[local]'"


def _cpu_count() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


class LocalEngine:
    """Remove backgrounds offline with an ONNX salient-object model.

    Satisfies the :class:`~photoroom_bg.Engine` protocol, so
    ``BatchRemover(LocalEngine(), sink=...)`` works like the API engine, without credits.
    One onnxruntime session is created on first use (thread-safe) and shared; inference runs in
    a pool of ``max_workers`` threads, off the event loop.

    Args:
        model: a model name: ``"u2netp"`` (bundled, the default), or one rembg has already
            downloaded: ``"u2net"``, ``"u2net_human_seg"``, ``"silueta"``,
            ``"isnet-general-use"``, ``"isnet-anime"``, ``"birefnet-general"`` … With
            ``model_path``, a model name or family (``"u2net"``, ``"isnet"``, ``"birefnet"``)
            choosing the pre- and post-processing.
        model_path: an explicit ``.onnx`` file to load instead of looking ``model`` up.
        max_workers: images processed at once (default: the number of CPUs, at most 4).
            Several single-threaded runs keep the CPUs busier than one run spread over them,
            because decoding and encoding overlap the next image's inference.
        threads_per_worker: onnxruntime intra-op threads per image (default: CPUs divided by
            ``max_workers``, at least 1).
        providers: onnxruntime execution providers, best first (default: CUDA, ROCm, DirectML
            or CoreML when available, then the CPU). Providers onnxruntime does not offer on
            this machine are skipped with a :class:`RuntimeWarning`; the CPU is always last.

    Raises:
        ConfigurationError: unknown model, missing file, or the ``local`` extra not installed.
        ValidationError: ``max_workers`` or ``threads_per_worker`` below 1.

    Attributes:
        name: ``"local:<model>"`` (or ``"local:<file stem>"`` with ``model_path``), recorded in
            manifests.
        bills: always ``False``: local runs cost no credit.
        max_workers: images processed at once.
        threads_per_worker: onnxruntime intra-op threads per image.
    """

    def __init__(
        self,
        model: str = "u2netp",
        *,
        model_path: str | os.PathLike[str] | None = None,
        max_workers: int | None = None,
        threads_per_worker: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        try:
            from ._onnx_models import resolve_model
        except ImportError as exc:  # numpy missing
            raise ConfigurationError(_MISSING_EXTRA) from exc
        cpus = _cpu_count()
        for name, given in (
            ("max_workers", max_workers),
            ("threads_per_worker", threads_per_worker),
        ):
            if given is not None and (isinstance(given, bool) or not isinstance(given, int)):
                raise ValidationError(f"{name} must be a whole number, not {given!r}")
        if max_workers is not None and max_workers < 1:
            raise ValidationError(f"max_workers must be at least 1, not {max_workers}")
        workers = max_workers if max_workers is not None else min(4, cpus)
        threads = threads_per_worker if threads_per_worker is not None else max(1, cpus // workers)
        if threads < 1:
            raise ValidationError(f"threads_per_worker must be at least 1, not {threads}")
        self._spec: ModelSpec = resolve_model(model, model_path)
        self.name = f"local:{self._spec.name}"
        self.bills = False
        self.max_workers = workers
        self.threads_per_worker = threads
        self._providers = list(providers) if providers is not None else None
        self._lock = threading.Lock()
        self._session: Any = None
        self._io_names: tuple[str, str] = ("", "")
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False

    @staticmethod
    def available_models() -> list[str]:
        """Model names that load right now: the bundled ``u2netp`` and rembg's downloads.

        Raises:
            ConfigurationError: the ``local`` extra is not installed.
        """
        try:
            from ._onnx_models import available_models
        except ImportError as exc:  # numpy missing
            raise ConfigurationError(_MISSING_EXTRA) from exc
        return available_models()

    def __repr__(self) -> str:
        return f"LocalEngine(name={self.name!r}, max_workers={self.max_workers})"

    @property
    def providers(self) -> list[str]:
        """The execution providers the session uses (creates the session if needed)."""
        session = self._get_session()
        result: list[str] = session.get_providers()
        return result

    def check_options(self, options: object) -> None:
        """Refuse options this engine can never honour, before any image is read.

        :class:`~photoroom_bg.BatchRemover` and the ``photoroom-bg`` command call it up front
        (see :func:`~photoroom_bg.engines.check_engine_options`), so a batch with such options
        stops at once instead of failing every job alike.

        Raises:
            ValidationError: :class:`~photoroom_bg.EditOptions` (AI editing needs the API),
                ``despill=True``, or a ``bg_color`` that is not a colour.
        """
        _plan(options)

    async def process(self, image: bytes, options: object) -> ImageResult:
        """Remove the background of one image, honouring ``options`` like ``/v1/segment``.

        Args:
            image: the encoded input image (PNG, JPEG, WEBP or anything Pillow reads).
            options: a :class:`~photoroom_bg.SegmentOptions`; ``format``, ``channels``,
                ``bg_color``, ``size`` and ``crop`` are honoured.

        Returns:
            The cut-out, encoded as ``options.format`` asks.

        Raises:
            ValidationError: :class:`~photoroom_bg.EditOptions` (AI editing needs the API),
                ``despill=True`` or a ``bg_color`` that is not a colour.
            InvalidImageError: the bytes are empty, corrupt or not an image.
            ConfigurationError: the engine is closed, or the model cannot be loaded or run.
        """
        plan = _plan(options)
        executor = self._get_executor()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._process_sync, image, plan)

    async def aclose(self) -> None:
        """Finish running images, stop the worker threads and drop the model session."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)
        with self._lock:
            self._session = None

    async def __aenter__(self) -> LocalEngine:
        """Use the engine in ``async with``; it is closed on exit."""
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the engine (see :meth:`aclose`)."""
        await self.aclose()

    def _get_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed:
                raise ConfigurationError("this LocalEngine is closed; create a new one")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.max_workers, thread_name_prefix="photoroom_bg-local"
                )
            return self._executor

    def _get_session(self) -> Any:
        session = self._session
        if session is None:
            with self._lock:
                if self._closed:
                    raise ConfigurationError("this LocalEngine is closed; create a new one")
                if self._session is None:
                    self._session = self._create_session()
                session = self._session
        return session

    def _create_session(self) -> Any:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ConfigurationError(_MISSING_EXTRA) from exc
        from ._onnx_graph import use_half_pixel_resize

        available = ort.get_available_providers()
        wanted = self._providers if self._providers is not None else PREFERRED_PROVIDERS
        missing = [p for p in wanted if p not in available]
        if self._providers is not None and missing:
            warnings.warn(
                f"onnxruntime offers no {', '.join(missing)} here (available: "
                f"{', '.join(available)}); running without it",
                RuntimeWarning,
                stacklevel=4,
            )
        providers = [p for p in wanted if p in available]
        if "CPUExecutionProvider" not in providers:
            providers = [*providers, "CPUExecutionProvider"]
        settings = ort.SessionOptions()
        settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        settings.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        settings.intra_op_num_threads = self.threads_per_worker
        settings.inter_op_num_threads = 1
        settings.log_severity_level = 3
        spec = self._spec
        model = spec.read_verified()
        try:
            if spec.family.half_pixel_resize:
                model = use_half_pixel_resize(model)
            session = ort.InferenceSession(model, settings, providers=providers)
        except Exception as exc:  # onnxruntime raises its own, undocumented exception types
            raise ConfigurationError(f"cannot load model {spec.path}: {exc}") from exc
        inputs, outputs = session.get_inputs(), session.get_outputs()
        shape = list(inputs[0].shape)
        side = spec.family.input_size
        if len(shape) != 4 or any(isinstance(d, int) and d != side for d in shape[2:]):
            raise ConfigurationError(
                f"model {spec.path} takes input of shape {shape}, but the {spec.family.name} "
                f"family feeds (1, 3, {side}, {side}): name the file's family (model=, or "
                "--model on the command line)"
            )
        self._io_names = (inputs[0].name, outputs[0].name)
        return session

    def _process_sync(self, image: bytes, plan: RenderPlan) -> ImageResult:
        from PIL import Image

        from ._local_imaging import decode, render

        picture = decode(image, plan.max_pixels)
        session = self._get_session()
        family = self._spec.family
        input_name, output_name = self._io_names
        try:
            (output,) = session.run([output_name], {input_name: family.prepare(picture)})
        except Exception as exc:  # onnxruntime's own exception types
            raise ConfigurationError(f"model {self.name} failed to run: {exc}") from exc
        mask = Image.fromarray(family.read_mask(output), "L")
        mask = mask.resize(picture.size, Image.Resampling.LANCZOS)
        content, content_type = render(picture, mask, plan)
        return ImageResult(content=content, content_type=content_type)


def _plan(options: object) -> RenderPlan:
    from ._local_imaging import RenderPlan, parse_color

    if not isinstance(options, SegmentOptions):
        raise ValidationError(
            f"LocalEngine only removes backgrounds and takes SegmentOptions, not "
            f"{type(options).__name__}; AI editing (EditOptions) needs the Photoroom API engine"
        )
    if options.despill:
        raise ValidationError(
            "despill=True is not available offline; LocalEngine does not remove green-screen "
            "spill. Use despill=False, or the Photoroom API engine"
        )
    color = parse_color(options.bg_color) if options.bg_color is not None else None
    return RenderPlan(options, color)
