"""The loaded registry: models looked up by id or alias, cascades resolved to their stages."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from .schema import Availability, LabelSpec, ModelKind, ModelSpec, StageSpec
from .weights import check_weights


class UnknownModelError(KeyError):
    """No model or cascade has this id or alias."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = list(known)
        super().__init__(name)

    def __str__(self) -> str:
        return f"no model or cascade called {self.name!r}; known: {', '.join(self.known)}"


class Registry:
    """The validated models, looked up by id or alias (case-insensitive)."""

    def __init__(
        self, models: Sequence[ModelSpec], models_root: Path, source: Path | None = None
    ) -> None:
        self.models_root = models_root
        self.source = source
        self._models: dict[str, ModelSpec] = {}
        self._names: dict[str, str] = {}
        for spec in models:
            self._models[spec.id] = spec
            for name in (spec.id, *spec.aliases):
                self._names[name.lower()] = spec.id

    def __iter__(self) -> Iterator[ModelSpec]:
        return iter(self._models.values())

    def __len__(self) -> int:
        return len(self._models)

    def ids(self) -> list[str]:
        return list(self._models)

    def get(self, id_or_alias: str) -> ModelSpec:
        model_id = self._names.get(id_or_alias.lower())
        if model_id is None:
            raise UnknownModelError(id_or_alias, self.ids())
        return self._models[model_id]

    def __contains__(self, id_or_alias: object) -> bool:
        return isinstance(id_or_alias, str) and id_or_alias.lower() in self._names

    def weights_path(self, spec: ModelSpec) -> Path | None:
        """The absolute weights location (relative paths are under the models root)."""
        if spec.weights is None:
            return None
        path = Path(spec.weights).expanduser()
        return path if path.is_absolute() else self.models_root / path

    def stages(self, id_or_alias: str) -> list[StageSpec]:
        """The stages to run: a cascade's, or the single model itself."""
        spec = self.get(id_or_alias)
        if spec.kind is ModelKind.CASCADE:
            return list(spec.stages)
        return [StageSpec(model=spec.id)]

    def output_labels(self, id_or_alias: str) -> list[LabelSpec]:
        """The labels a model or cascade produces (a cascade's last stage's, unless its own)."""
        spec = self.get(id_or_alias)
        if spec.kind is ModelKind.CASCADE and not spec.labels:
            return self.get(spec.stages[-1].model).labels
        return spec.labels

    def check(self, id_or_alias: str) -> Availability:
        spec = self.get(id_or_alias)
        if spec.kind is ModelKind.CASCADE:
            missing = []
            for stage in spec.stages:
                stage_state = self.check(stage.model)
                if not stage_state.available:
                    missing.append(f"stage {stage.model}: {stage_state.reason}")
            if missing:
                return Availability(available=False, reason="; ".join(missing))
            return Availability(available=True, reason="all stages available")
        return check_weights(spec, self.weights_path(spec))

    def availability(self) -> dict[str, Availability]:
        return {model_id: self.check(model_id) for model_id in self._models}
