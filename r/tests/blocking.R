# Workers' output reaches the console while R is blocked in C code (an
# accept on a server socket), until the test connects to PORT.
# Usage: Rscript blocking.R PORT
library("cmlray")
port <- as.integer(commandArgs(trailingOnly = TRUE)[1])
workers <- launch.workers(n = 1, cpu = 0.25, memory = 0.5,
                          code = 'i <- 0; repeat { i <- i + 1; cat("tick", i, "\n"); Sys.sleep(0.05) }')
await.workers(workers, wait_for_completion = FALSE)
message("blocking")
con <- socketConnection(host = "127.0.0.1", port = port, server = TRUE, blocking = TRUE,
                        open = "r+", timeout = 120)
message("released")
close(con)
stopped <- stop.workers()
stopifnot(length(stopped) == 1L, stopped[[1]]$status == "stopped")
message("done")
