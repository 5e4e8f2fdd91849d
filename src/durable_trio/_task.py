"""Task definitions: a name, a Params type, an Output type and the async code to run."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import attrs

from ._core.names import validate_name
from ._core.options import SpawnOptions
from ._errors import ConfigurationError, InvalidInput

if TYPE_CHECKING:
    from ._context import TaskContext

P = TypeVar("P")
R = TypeVar("R")
# A task's output type: covariant, so a task returning int goes where one returning
# object is asked for (`wait_result(task, id)` passed to print, say).
R_co = TypeVar("R_co", covariant=True)

__all__ = ["Task", "TaskDefinition", "task"]


def _task_name(name: object) -> str:
    return validate_name(name, what="task name")


@attrs.frozen
class TaskDefinition(Generic[P, R_co]):
    """A registered-able task: what `@task` returns and what `Durable.register` takes.

    ``params_type`` and ``output_type`` come from the function's annotations; values are
    converted with cattrs (``Any`` means plain JSON). ``non_retryable`` lists exception
    types that fail the task at once (`NonRetryable` always does). ``name`` follows the
    rules of every name (1-200 printable characters, not starting with ``$``): an
    invalid one raises `InvalidInput` here, however the definition is made.
    """

    name: str = attrs.field(converter=_task_name)
    fn: Callable[[TaskContext, P], Awaitable[R_co]]
    params_type: Any = Any
    output_type: Any = Any
    options: SpawnOptions | None = None
    non_retryable: tuple[type[BaseException], ...] = ()

    async def __call__(self, ctx: TaskContext, params: P) -> R_co:
        return await self.fn(ctx, params)


def task(
    name: str | None = None,
    *,
    options: SpawnOptions | None = None,
    non_retryable: tuple[type[BaseException], ...] = (),
) -> Callable[[Callable[[TaskContext, P], Awaitable[R]]], TaskDefinition[P, R]]:
    """Decorate ``async def fn(ctx, params: Params) -> Output`` as a durable task.

    The name defaults to the function's name (an empty name is refused, not replaced);
    it is what is stored in the database, so keep it stable across deploys. ``options``
    are the defaults for every spawn (options given to a spawn replace them as a whole).
    """

    def wrap(fn: Callable[[TaskContext, P], Awaitable[R]]) -> TaskDefinition[P, R]:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigurationError(f"task {fn.__qualname__} must be an async function")
        params_type, output_type = _types_of(fn, params_index=1)
        return TaskDefinition(
            name=fn.__name__ if name is None else name,
            fn=fn,
            params_type=params_type,
            output_type=output_type,
            options=options,
            non_retryable=tuple(non_retryable),
        )

    return wrap


class Task(Generic[P, R_co]):
    """Class-style task: subclass, set ``name`` and implement ``async run(params, ctx)``
    (note the order: params first, unlike a ``@task`` function's ``(ctx, params)``).

    Optional class attributes, as for ``@task``: ``options`` (default `SpawnOptions` for
    every spawn; options given to a spawn replace them) and ``non_retryable`` (exception
    types that fail the task at once). ``MyTask.definition()`` (or passing the class to
    `Durable.register`) gives the `TaskDefinition`; the instance is created once per
    registration.
    """

    name: ClassVar[str]
    options: ClassVar[SpawnOptions | None] = None
    non_retryable: ClassVar[tuple[type[BaseException], ...]] = ()

    async def run(self, params: P, ctx: TaskContext) -> R_co:
        raise NotImplementedError

    @classmethod
    def definition(cls) -> TaskDefinition[P, R_co]:
        if not isinstance(getattr(cls, "name", None), str):
            raise ConfigurationError(f"{cls.__qualname__} must set a class attribute `name`")
        instance = cls()
        params_type, output_type = _types_of(cls.run, params_index=1)

        async def call(ctx: TaskContext, params: P) -> R_co:
            return await instance.run(params, ctx)

        return TaskDefinition(
            name=cls.name,
            fn=call,
            params_type=params_type,
            output_type=output_type,
            options=cls.options,
            non_retryable=cls.non_retryable,
        )


def as_definition(obj: Any) -> TaskDefinition[Any, Any]:
    if isinstance(obj, TaskDefinition):
        return obj
    if isinstance(obj, type) and issubclass(obj, Task):
        return obj.definition()
    raise ConfigurationError(
        f"expected a @durable_trio.task function or a durable_trio.Task subclass, got {obj!r}"
    )


def _types_of(fn: Callable[..., Any], *, params_index: int) -> tuple[Any, Any]:
    """(Params type, Output type) from annotations; Any where none is given."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception as ex:
        raise ConfigurationError(f"cannot resolve annotations of {fn.__qualname__}: {ex}") from ex
    positional = [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(positional) <= params_index:
        raise ConfigurationError(
            f"{fn.__qualname__} must take (ctx, params); it takes {positional}"
        )
    params_type = hints.get(positional[params_index], Any)
    output_type = hints.get("return", Any)
    return params_type, (None if output_type is type(None) else output_type)


def spawnable(obj: Any) -> TaskDefinition[Any, Any]:
    """`as_definition` for what a spawn was given: anything that is not a task is bad
    input (`InvalidInput`), whether the client or a task's context spawns it."""
    try:
        return as_definition(obj)
    except ConfigurationError as ex:
        raise InvalidInput(str(ex)) from None
