# CML's R workers functions, with CML's R names and arguments, over cmlray.
# A worker is a named list: id, name, status, created_at, running_at,
# finished_at, duration, ip_address, node_id, app_url, cpu, memory,
# nvidia_gpu, exit_code, reason, tail (a character vector of its last lines).

.worker <- function(worker) {
  if (is.null(worker)) return(NULL)
  worker$tail <- as.character(unlist(worker$tail))
  worker$result <- NULL # fn= workers only, which R cannot launch
  worker
}

.workers <- function(workers) structure(lapply(workers, .worker), class = "cmlray_workers")

.COLUMNS <- list(id = "", name = "", status = "", ip_address = "", cpu = 0, memory = 0,
                 nvidia_gpu = 0, duration = 0, exit_code = 0, reason = "")

#' The workers as a data frame: one row each, the scalar fields as columns.
as.data.frame.cmlray_workers <- function(x, ...) {
  columns <- lapply(names(.COLUMNS), function(key) {
    template <- .COLUMNS[[key]]
    vapply(x, function(worker) {
      value <- worker[[key]]
      if (is.null(value)) methods::as(NA, class(template)) else methods::as(value, class(template))
    }, template)
  })
  data.frame(structure(columns, names = names(.COLUMNS)), stringsAsFactors = FALSE)
}

print.cmlray_workers <- function(x, ...) {
  if (length(x) == 0L) {
    cat("<no workers>\n")
  } else {
    print(as.data.frame(x), row.names = FALSE)
  }
  invisible(x)
}

#' Launch n workers running an R (or Python) script, R code or shell lines.
#'
#' As CML's launch.workers: kernel "r" runs R with Rscript, "python3" runs
#' Python; code whose lines all start with "!" runs in the shell. A
#' relative script path resolves against the working directory the session
#' started in. Further arguments (name, timeout_s, grace_period_s, ...) go
#' to cmlray's Python launch_workers. Returns the workers, in launch order.
launch.workers <- function(n, cpu, memory, nvidia_gpu = 0, kernel = "r", script = "",
                           code = "", env = "", ...) {
  caller <- "launch.workers"
  extra <- list(...)
  if (length(extra) > 0L && (is.null(names(extra)) || any(!nzchar(names(extra))))) {
    stop(caller, ": arguments after env must be named (name = ..., timeout_s = ...)",
         call. = FALSE)
  }
  args <- c(list(
    n = .scalar_number(n, "n", caller),
    cpu = .scalar_number(cpu, "cpu", caller),
    memory = .scalar_number(memory, "memory", caller),
    nvidia_gpu = .scalar_number(nvidia_gpu, "nvidia_gpu", caller),
    kernel = .scalar_string(kernel, "kernel", caller),
    script = .scalar_string(script, "script", caller),
    code = .scalar_string(code, "code", caller),
    env = .env_object(env, caller)
  ), extra)
  .workers(.call(caller, "launch_workers", args))
}

#' All workers of this R session, newest state, in launch order.
list.workers <- function() {
  if (is.null(.state$bridge)) return(.workers(list()))
  .workers(.call("list.workers", "list_workers"))
}

#' Stop workers (ids or workers); with none, every worker of this session.
#'
#' Each program and everything it started get SIGTERM, then SIGKILL after
#' a grace period. Returns, invisibly, one list per worker: id, status_code
#' (200, or 404 for an id this session never launched), status and worker.
stop.workers <- function(...) {
  caller <- "stop.workers"
  ids <- .ids(list(...), "...", caller)
  if (is.null(.state$bridge) && length(ids) == 0L) return(invisible(list()))
  results <- .call(caller, "stop_workers", list(ids = as.list(ids)))
  invisible(lapply(results, function(result) {
    result$worker <- .worker(result$worker)
    result
  }))
}

#' Wait until workers succeed (or run), fail, or timeout_seconds pass.
#'
#' As CML's await.workers: returns list(workers = ..., failures = ...),
#' as soon as every worker is decided. timeout_seconds = 0 waits without
#' limit. Workers' output keeps flowing to the console meanwhile.
await.workers <- function(ids, wait_for_completion = TRUE, timeout_seconds = 60) {
  caller <- "await.workers"
  if (missing(ids)) stop(caller, ": ids is missing: give worker ids or workers", call. = FALSE)
  args <- list(
    ids = as.list(.ids(ids, "ids", caller)),
    wait_for_completion = .scalar_flag(wait_for_completion, "wait_for_completion", caller),
    timeout_seconds = .scalar_number(timeout_seconds, "timeout_seconds", caller)
  )
  result <- .call(caller, "await_workers", args)
  list(workers = .workers(result$workers), failures = .workers(result$failures))
}

#' Start this R session's cmlray session explicitly (the first call does it
#' otherwise): attach to a Ray cluster at address (default RAY_ADDRESS, else
#' a Ray head of its own), with num_cpus/num_gpus for an own head.
cmlray.init <- function(address = NULL, num_cpus = NULL, num_gpus = NULL, project_dir = NULL,
                        log_dir = NULL) {
  caller <- "cmlray.init"
  args <- list(
    address = if (!is.null(address)) .scalar_string(address, "address", caller),
    num_cpus = if (!is.null(num_cpus)) .scalar_number(num_cpus, "num_cpus", caller),
    num_gpus = if (!is.null(num_gpus)) .scalar_number(num_gpus, "num_gpus", caller),
    project_dir = if (!is.null(project_dir)) {
      normalizePath(.scalar_string(project_dir, "project_dir", caller), mustWork = FALSE)
    },
    log_dir = if (!is.null(log_dir)) .scalar_string(log_dir, "log_dir", caller)
  )
  invisible(.call(caller, "init", args))
}

#' End the session: stop its workers, end its own Ray head and the Python
#' process behind it. The next call starts a new session.
cmlray.shutdown <- function() {
  .bridge_close()
}
