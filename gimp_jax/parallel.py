"""Data parallelism over a device mesh, and multi-host start-up.

One mesh axis (`"data"`) spans the devices. A batch is split along its leading axis across them;
the train state is replicated on every device, or, with `parallel.shard_params`, each large
parameter (and its optimizer moments, which have the same shape) is split along its largest
dimension that the device count divides (ZeRO-3 / FSDP style: XLA gathers it where it is used).
Semantics do not change: the jitted step computes exactly what it computes on one device (GSPMD
inserts the gradient all-reduce), so losses agree to float rounding.

Multi-host: every process runs the same program; `initialize_distributed` connects them
(`jax.distributed.initialize`), after which `jax.devices()` lists the devices of all hosts. Each
process loads only its rows of every global batch (`process_rows`), and `shard_batch` assembles
the global array from the per-process pieces. In a job of several processes every stage trains on
the mesh, even one whose batch does not split over the devices (`stage_mesh`): that batch is
replicated (`place_batch`), so each state leaf is a global array that orbax can checkpoint (it
refuses host-local arrays there). See docs/scaling.md.
"""

from collections.abc import Mapping
import os

from absl import logging
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np


def default_config() -> ml_collections.ConfigDict:
  """The `parallel` config block (add as `config.parallel = parallel.default_config()`)."""
  c = ml_collections.ConfigDict()
  c.num_devices = 0              # devices in the mesh; 0 = all of jax.devices() (every host's)
  c.axis = "data"                # name of the mesh axis the batch is split along
  c.shard_params = False         # split large parameters / moments across devices (FSDP-style)
  c.min_shard_size = 2 ** 18     # parameters with fewer elements stay replicated
  c.coordinator_address = ""     # "host:port" of process 0; "" = auto-detect or single process
  c.num_processes = 0            # processes in the job; 0 = auto-detect
  c.process_id = -1              # this process's rank; -1 = auto-detect
  c.local_device_ids = ""        # "0,1,2,3": devices this process uses; "" = all visible
  c.auto_detect = True           # on Slurm / TPU pods / Open MPI, let JAX read the environment
  return c


def _block(parallel_cfg: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
  """The `parallel` config block, or its defaults for None (a config without the block)."""
  return default_config() if parallel_cfg is None else parallel_cfg


def cluster_hint(environ: Mapping[str, str] | None = None) -> str | None:
  """The multi-process launcher visible in the environment, or None for a single process.

  'slurm' (SLURM_JOB_ID with more than one task), 'ompi' (OMPI_COMM_WORLD_SIZE > 1) or 'tpu'
  (TPU_WORKER_HOSTNAMES listing several hosts, as on a Cloud TPU pod slice).
  """
  env = os.environ if environ is None else environ
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1"))) > 1:
    return "slurm"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return "ompi"
  if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
    return "tpu"
  return None


def initialize_distributed(parallel_cfg: ml_collections.ConfigDict | None = None,
                           environ: Mapping[str, str] | None = None) -> bool:
  """Connects the processes of a multi-host job; call it first, before any other JAX call.

  With `parallel.coordinator_address` set, uses the explicit fields (fields left at 0 / -1 are
  auto-detected by JAX, which needs a supported launcher). Otherwise, with `auto_detect` and a
  launcher in the environment (`cluster_hint`), lets JAX read everything from it. Otherwise this
  is a single-process run and nothing happens.

  Args:
    parallel_cfg: the `parallel` config block, or None for its defaults.
    environ: the environment to inspect (default os.environ).

  Returns:
    True if `jax.distributed` is now initialized (by this call or an earlier one).

  Raises:
    ValueError: an explicit coordinator without process count / id and no launcher to supply them.
  """
  p = _block(parallel_cfg)
  if jax.distributed.is_initialized():
    return True
  hint = cluster_hint(environ) if p.auto_detect else None
  if p.coordinator_address:
    if (p.num_processes <= 0 or p.process_id < 0) and hint is None:
      raise ValueError(
          f"parallel.coordinator_address={p.coordinator_address!r} needs parallel.num_processes "
          f"(got {p.num_processes}) and parallel.process_id (got {p.process_id}) outside Slurm, "
          "Open MPI or a TPU pod.")
    kwargs = {"coordinator_address": p.coordinator_address,
              "num_processes": p.num_processes if p.num_processes > 0 else None,
              "process_id": p.process_id if p.process_id >= 0 else None}
  elif hint is not None:
    kwargs = {}
  else:
    logging.debug("Single process: jax.distributed not initialized.")
    return False
  if p.local_device_ids:
    kwargs["local_device_ids"] = [int(i) for i in str(p.local_device_ids).split(",")]
  logging.info("jax.distributed.initialize(%s) (launcher: %s)", kwargs, hint or "explicit")
  jax.distributed.initialize(**kwargs)
  logging.info("Process %d of %d; %d local / %d global devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def make_mesh(num_devices: int | None = None, axis: str = "data") -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (None or 0: all, on every host)."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if not 1 <= n <= len(devices):
    raise ValueError(f"parallel.num_devices={n}, but {len(devices)} devices are visible.")
  if jax.process_count() > 1 and n != len(devices):
    raise ValueError(f"parallel.num_devices={n}: a multi-host mesh must use all "
                     f"{len(devices)} devices.")
  return Mesh(np.asarray(devices[:n]), (axis,))


def mesh_from_config(parallel_cfg: ml_collections.ConfigDict | None = None) -> Mesh:
  """The mesh of the `parallel` config block (None: its defaults, every device)."""
  p = _block(parallel_cfg)
  return make_mesh(p.num_devices, p.axis)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, axis: str = "data") -> NamedSharding:
  """Leading (batch) axis split over `axis`, the rest whole."""
  return NamedSharding(mesh, P(axis))


def stage_mesh(parallel_cfg: ml_collections.ConfigDict | None, batch_size: int) -> Mesh | None:
  """The mesh a stage trains on (`parallel_cfg`: the `parallel` config block), or None for one
  device.

  One device: None. Otherwise the mesh when `batch_size` splits evenly over it. When it does not:
  in a job of several processes still the mesh (the batch replicated: every device computes the
  whole step, and every state leaf stays a global array); in one process None, with a warning.
  """
  if jax.device_count() == 1:
    return None
  mesh = mesh_from_config(parallel_cfg)
  if batch_size % mesh.size:
    if jax.process_count() > 1:
      logging.info("Batch size %d does not split over %d devices: the batch is replicated.",
                   batch_size, mesh.size)
      return mesh
    logging.warning("Batch size %d does not split over %d devices: this stage runs on one "
                    "device.", batch_size, mesh.size)
    return None
  return mesh


def process_rows(global_batch_size: int, process_index: int | None = None,
                 process_count: int | None = None) -> slice:
  """The rows of every global batch that this process loads: a contiguous 1/process_count.

  Every process iterates the same epoch order (a pure function of seed and epoch) and reads only
  `order[batch][process_rows(B)]`; `shard_batch` then stitches the pieces into the global batch.
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  if global_batch_size % count:
    raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                     f"{count} processes")
  local = global_batch_size // count
  return slice(index * local, (index + 1) * local)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, axis: str = "data"
                ) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays split along their leading axis.

  Args:
    batch: {name: [local_rows, ...]} arrays (the whole batch in a single-process run). Fields of
      strings (e.g. 'patient_id') are host metadata and are left out.
    mesh: the mesh.
    axis: the mesh axis of the batch.

  Returns:
    {name: jax.Array [local_rows * process_count, ...]} with sharding `batch_sharding(mesh)`.
  """
  sharding = batch_sharding(mesh, axis)
  devices = mesh.shape[axis]
  out = {}
  for name, value in batch.items():
    value = np.asarray(value)
    if value.dtype.kind in "OSU":
      continue
    rows = value.shape[0] * jax.process_count()
    if rows % devices:
      raise ValueError(f"batch field {name!r}: {rows} rows cannot be split over {devices} "
                       f"devices (mesh axis {axis!r}); make the batch size a multiple.")
    out[name] = jax.make_array_from_process_local_data(sharding, value)
  return out


def place_batch(batch: Mapping[str, np.ndarray], mesh: Mesh, axis: str = "data"
                ) -> dict[str, jax.Array]:
  """A whole host batch (the same on every process) -> global arrays on the mesh.

  Split along the leading axis (each process contributing its `process_rows`, `shard_batch`) when
  the B rows divide over the devices; otherwise replicated (every process passes all B rows).

  Args:
    batch: {name: [B, ...]} arrays; string fields (e.g. 'patient_id') are left out.

  Returns:
    {name: jax.Array [B, ...]} split over `axis`, or replicated.
  """
  arrays = {k: np.asarray(v) for k, v in batch.items() if np.asarray(v).dtype.kind not in "OSU"}
  rows = len(next(iter(arrays.values())))
  if rows % mesh.shape[axis] == 0 and rows % jax.process_count() == 0:
    local = process_rows(rows)
    return shard_batch({k: v[local] for k, v in arrays.items()}, mesh, axis)
  return {k: jax.make_array_from_process_local_data(replicated(mesh), v)
          for k, v in arrays.items()}


def global_sharding(sharding: jax.sharding.Sharding) -> jax.sharding.Sharding:
  """`sharding`, or, in a job of several processes where it is host-local (e.g. the single device
  of a freshly built model), replication over every device of every process."""
  if jax.process_count() == 1 or not sharding.is_fully_addressable:
    return sharding
  return NamedSharding(Mesh(np.asarray(jax.devices()), ("data",)), P())


def leaf_sharding(leaf, mesh: Mesh, axis: str = "data", min_size: int = 2 ** 18
                  ) -> NamedSharding:
  """Replicated, or split along the largest dimension the device count divides (leaves of at
  least `min_size` elements; PRNG keys and scalars always replicated)."""
  shape = getattr(leaf, "shape", ())
  dtype = getattr(leaf, "dtype", None)
  if (not shape or np.prod(shape) < min_size
      or (dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key))):
    return replicated(mesh)
  devices = mesh.shape[axis]
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % devices == 0:
      spec = [None] * len(shape)
      spec[dim] = axis
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def state_shardings(state, mesh: Mesh, parallel_cfg: ml_collections.ConfigDict | None = None):
  """A pytree of shardings for `state` (e.g. a TrainState): replicated, or with
  `parallel.shard_params` the large leaves of params and optimizer state split (`leaf_sharding`)."""
  p = _block(parallel_cfg)
  if not p.shard_params:
    return jax.tree_util.tree_map(lambda _: replicated(mesh), state)
  return jax.tree_util.tree_map(
      lambda x: leaf_sharding(x, mesh, p.axis, p.min_shard_size), state)


def _put(x, sharding: NamedSharding):
  """One leaf on `sharding`. In a job of several processes a host-local leaf (the same value on
  every process) is assembled from host memory, as device_put moves only global arrays there."""
  if jax.process_count() == 1 or not getattr(x, "is_fully_addressable", True):
    return jax.device_put(x, sharding)
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding),
                                    impl=jax.random.key_impl(x))
  value = np.asarray(x)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def place_state(state, mesh: Mesh, parallel_cfg: ml_collections.ConfigDict | None = None):
  """`state` on the mesh with `state_shardings` (copies; the input may be donated later)."""
  return jax.tree_util.tree_map(_put, state, state_shardings(state, mesh, parallel_cfg))


def parallelize_step(step, state, mesh: Mesh,
                     parallel_cfg: ml_collections.ConfigDict | None = None):
  """`step` (from `train.steps.make_train_step`) jitted for the mesh, donating the state.

  Returns:
    A function `(state, batch, key) -> (state, metrics)`: `state` as placed by `place_state`,
    `batch` from `shard_batch` or `place_batch` (split or replicated: the input shardings are
    the arguments'), the state keeps its shardings, metrics replicated.
  """
  return jax.jit(step, out_shardings=(state_shardings(state, mesh, parallel_cfg), replicated(mesh)),
                 donate_argnums=0)
