# Shape checks on the R side: a value that cannot reach Python as the
# scalar it must be (a vector, NA, a function...) is an R error naming the
# argument. Ranges and meanings are checked once, by cmlray in Python.

.fail <- function(caller, argument, expected, value) {
  stop(sprintf("%s: %s must be %s, got %s", caller, argument, expected, .shown(value)),
       call. = FALSE)
}

.shown <- function(value) {
  if (is.null(value)) return("NULL")
  if (is.atomic(value) && length(value) == 1L) return(deparse(value))
  sprintf("%s of length %d", class(value)[1L], length(value))
}

.scalar_number <- function(value, argument, caller) {
  if (!is.numeric(value) || length(value) != 1L || is.na(value)) {
    .fail(caller, argument, "a single number", value)
  }
  as.numeric(value)
}

.scalar_string <- function(value, argument, caller) {
  if (!is.character(value) || length(value) != 1L || is.na(value)) {
    .fail(caller, argument, "a single string", value)
  }
  value
}

.scalar_flag <- function(value, argument, caller) {
  if (!is.logical(value) || length(value) != 1L || is.na(value)) {
    .fail(caller, argument, "TRUE or FALSE", value)
  }
  value
}

# env as CML's R users pass it: "" (none), a named list or a named vector.
.env_object <- function(env, caller) {
  empty <- structure(list(), names = character(0))
  expected <- 'a named list or named character vector of strings, or ""'
  if (!(is.null(env) || is.list(env) || is.atomic(env))) {
    .fail(caller, "env", expected, env)
  }
  if (length(env) == 0L || identical(env, "")) {
    return(empty)
  }
  keys <- names(env)
  if (is.null(keys) || any(is.na(keys) | !nzchar(keys))) {
    stop(sprintf("%s: env must be %s: every value needs a name, as in env = list(SEED = \"1\")",
                 caller, expected), call. = FALSE)
  }
  values <- lapply(seq_along(env), function(i) {
    value <- env[[i]]
    if (!is.atomic(value) || length(value) != 1L || is.na(value)) {
      .fail(caller, sprintf("env[[\"%s\"]]", keys[[i]]), "a single string", value)
    }
    as.character(value)
  })
  structure(values, names = keys)
}

# Worker ids from what callers pass: ids, worker lists, or lists of them.
.ids <- function(value, argument, caller) {
  if (is.character(value)) {
    if (anyNA(value)) .fail(caller, argument, "worker ids (no NA)", value)
    return(value)
  }
  if (is.list(value) && is.character(value$id) && length(value$id) == 1L) {
    return(value$id)
  }
  if (is.list(value) && is.null(names(value))) {
    return(unlist(lapply(value, .ids, argument = argument, caller = caller), use.names = FALSE))
  }
  .fail(caller, argument, "worker ids, workers (as launch.workers returns them), or a list of them",
        value)
}
