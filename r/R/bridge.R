# The R side of the bridge: one Python process (python -m cmlray._rbridge)
# per R session, R's own child. R writes one JSON request a line to its
# stdin (a pipe()) and reads one JSON reply a line from a FIFO on the
# child's fd 3. The child's stdout and stderr are R's own, so workers'
# output reaches the console without R reading it, even while R is blocked.
# When R ends, by any path, the pipe closes and the child ends the session.

.state <- new.env(parent = emptyenv())
.state$bridge <- NULL
.state$next_id <- 0L
.state$finalizer <- FALSE

# The Python that runs cmlray: option cmlray.python, else $CMLRAY_PYTHON,
# else python3 on PATH.
.python <- function() {
  python <- getOption("cmlray.python", Sys.getenv("CMLRAY_PYTHON", "python3"))
  if (!is.character(python) || length(python) != 1L || is.na(python) || !nzchar(python)) {
    stop("options(cmlray.python =) or CMLRAY_PYTHON must name a Python executable",
         call. = FALSE)
  }
  python
}

# LD_LIBRARY_PATH as it was before R started: R's launcher (R_HOME/etc/ldpaths)
# prepends R_LD_LIBRARY_PATH (R's and the system's library dirs), which makes
# another Python load the system's libpython under its own interpreter.
.library_path_before_r <- function() {
  current <- Sys.getenv("LD_LIBRARY_PATH")
  ldpaths <- file.path(R.home("etc"), "ldpaths")
  if (!nzchar(current) || !file.exists(ldpaths)) {
    return(current)
  }
  script <- '. "$0" >/dev/null 2>&1; printf %s "$R_LD_LIBRARY_PATH"'
  prefix <- suppressWarnings(tryCatch(
    system2("sh", c("-c", shQuote(script), shQuote(ldpaths)), stdout = TRUE),
    error = function(e) character(0)
  ))
  prefix <- paste(prefix, collapse = "")
  if (!nzchar(prefix)) {
    return(current)
  }
  if (identical(current, prefix)) {
    return("")
  }
  if (startsWith(current, paste0(prefix, ":"))) {
    return(substring(current, nchar(prefix) + 2L))
  }
  current
}

.bridge_command <- function(python, fifo_path) {
  library_path <- .library_path_before_r()
  environment <- if (nzchar(library_path)) {
    sprintf("LD_LIBRARY_PATH=%s; export LD_LIBRARY_PATH", shQuote(library_path))
  } else {
    "unset LD_LIBRARY_PATH"
  }
  # The shell opens the FIFO before exec: if Python cannot start, fd 3
  # closes with it and R reads EOF instead of waiting forever.
  sprintf("%s; exec 3>%s; exec %s -m cmlray._rbridge --reply-fd 3 --parent-pid %d",
          environment, shQuote(fifo_path), shQuote(python), Sys.getpid())
}

.bridge_start <- function() {
  python <- .python()
  dir <- tempfile("cmlray-")
  dir.create(dir, mode = "0700")
  on.exit(unlink(dir, recursive = TRUE))
  fifo_path <- file.path(dir, "replies")
  if (system2("mkfifo", c("-m", "600", shQuote(fifo_path))) != 0L) {
    stop("cmlray: could not create a FIFO with mkfifo in ", dir, call. = FALSE)
  }
  requests <- pipe(.bridge_command(python, fifo_path), open = "w")
  replies <- fifo(fifo_path, open = "r", blocking = TRUE)
  ready <- readLines(replies, n = 1L)
  if (length(ready) == 0L) {
    close(replies)
    suppressWarnings(close(requests))
    stop(sprintf(paste0(
      "cmlray: could not start its Python side with %s (see its error above). ",
      "Point options(cmlray.python = ...) or the CMLRAY_PYTHON variable at a ",
      "Python where `import cmlray` works, e.g. the project's .venv/bin/python."
    ), python), call. = FALSE)
  }
  if (!.state$finalizer) {
    reg.finalizer(.state, function(state) .bridge_close(), onexit = TRUE)
    .state$finalizer <- TRUE
  }
  info <- jsonlite::fromJSON(ready, simplifyVector = FALSE)
  .state$bridge <- list(requests = requests, replies = replies, pid = info$pid)
  .state$bridge
}

.bridge <- function() {
  if (is.null(.state$bridge)) .bridge_start() else .state$bridge
}

# Close the pipe: the Python side ends the session (workers stopped, its Ray
# head ended) and exits; close() waits for it.
.bridge_close <- function() {
  bridge <- .state$bridge
  .state$bridge <- NULL
  if (!is.null(bridge)) {
    try(suppressWarnings(close(bridge$requests)), silent = TRUE)
    try(close(bridge$replies), silent = TRUE)
  }
  invisible(NULL)
}

# Python's names in messages, as the R functions call them.
.r_names <- function(message) {
  for (name in c("launch", "list", "stop", "await")) {
    message <- gsub(paste0(name, "_workers"), paste0(name, ".workers"), message, fixed = TRUE)
  }
  message
}

.raise <- function(caller, reply) {
  message <- .r_names(reply$message)
  if (!startsWith(message, caller)) message <- paste0(caller, ": ", message)
  classes <- c(paste0("cmlray_", reply$error), "cmlray_error", "error", "condition")
  stop(structure(class = classes, list(message = message, call = NULL)))
}

.abandon <- function(id) {
  bridge <- .state$bridge
  if (!is.null(bridge)) {
    request <- jsonlite::toJSON(list(id = id, op = "abandon"), auto_unbox = TRUE)
    try({
      writeLines(request, bridge$requests)
      flush(bridge$requests)
    }, silent = TRUE)
  }
}

# One call to the Python side: its value, or an R error with Python's message.
.call <- function(caller, op, args = list()) {
  bridge <- .bridge()
  .state$next_id <- .state$next_id + 1L
  id <- .state$next_id
  args <- Filter(Negate(is.null), args)
  request <- jsonlite::toJSON(list(id = id, op = op, args = args),
                              auto_unbox = TRUE, null = "null", digits = NA)
  writeLines(request, bridge$requests)
  flush(bridge$requests)
  answered <- FALSE
  # Interrupted (Ctrl-C) before the reply: tell the Python side to stop
  # sending keepalives for this call.
  on.exit(if (!answered) .abandon(id))
  repeat {
    line <- readLines(bridge$replies, n = 1L)
    if (length(line) == 0L) {
      answered <- TRUE
      .bridge_close()
      stop(caller, ": cmlray's Python side exited (see its error above)", call. = FALSE)
    }
    reply <- jsonlite::fromJSON(line, simplifyVector = FALSE)
    # Skipped: keepalives (R checks for Ctrl-C between two of them), and
    # what an interrupted call sends late.
    if (identical(reply$id, id) && !isTRUE(reply$pending)) break
  }
  answered <- TRUE
  for (text in reply$warnings) warning(paste0(caller, ": ", text), call. = FALSE)
  if (!isTRUE(reply$ok)) .raise(caller, reply)
  reply$value
}
