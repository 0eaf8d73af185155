/*
 * Runs a fuzz target's LLVMFuzzerTestOneInput on saved inputs without libFuzzer, so the corpus and
 * the regressions replay under gcc and the sanitizer builds in `make check`.
 * Usage: fuzz_replay_TARGET FILE|DIR...   (a directory: every regular file in it, sorted)
 * A crash or a failed property aborts the process; otherwise it prints a count and exits 0.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

static const char *prog = "fuzz_replay";
static const char *current; /* the input being run, named if it crashes */

/* Present in sanitizer runtimes only: they end the process themselves after a report. */
extern void __sanitizer_set_death_callback(void (*cb)(void)) __attribute__((weak));

static void say(const char *s) {
    ssize_t n = write(STDERR_FILENO, s, strlen(s));
    (void)n;
}

/* Async-signal-safe: names the input, so a crash in CI says which file to look at. */
static void name_crash(void) {
    if (!current)
        return;
    say(prog);
    say(": crashed on ");
    say(current);
    say("\n");
    current = NULL;
}

static void on_fatal(int sig) {
    name_crash();
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Reads the file and runs it; 0, or -1 if it cannot be read. */
static int run_file(const char *path) {
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
        return -1;
    }
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, n;
    do {
        if (len == cap) {
            cap = cap ? cap * 2 : 4096;
            uint8_t *b = realloc(buf, cap);
            if (!b) {
                fprintf(stderr, "%s: %s: out of memory\n", prog, path);
                free(buf);
                fclose(fp);
                return -1;
            }
            buf = b;
        }
        n = fread(buf + len, 1, cap - len, fp);
        len += n;
    } while (n > 0);
    int bad = ferror(fp);
    fclose(fp);
    if (bad) {
        fprintf(stderr, "%s: %s: read error\n", prog, path);
        free(buf);
        return -1;
    }
    /* An exact-size copy, as libFuzzer gives, so ASan sees a read one byte past the input. */
    uint8_t *input = malloc(len ? len : 1);
    if (!input) {
        free(buf);
        return -1;
    }
    if (len)
        memcpy(input, buf, len);
    free(buf);
    current = path;
    LLVMFuzzerTestOneInput(input, len);
    current = NULL;
    free(input);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) {
    return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv) {
    const char *slash = strrchr(argv[0], '/');
    prog = slash ? slash + 1 : argv[0];
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", prog);
        return 2;
    }
    if (__sanitizer_set_death_callback)
        __sanitizer_set_death_callback(name_crash);
    struct sigaction sa = {0};
    sa.sa_handler = on_fatal;
    sigemptyset(&sa.sa_mask);
    /* A sanitizer reports faults itself (and then calls name_crash): leave its handlers alone. */
    const int fatal[] = {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL};
    size_t nfatal = __sanitizer_set_death_callback ? 1 : sizeof(fatal) / sizeof(fatal[0]);
    for (size_t i = 0; i < nfatal; i++)
        sigaction(fatal[i], &sa, NULL);
    int runs = 0, errors = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st)) {
            fprintf(stderr, "%s: %s: %s\n", prog, argv[i], strerror(errno));
            errors++;
            continue;
        }
        if (!S_ISDIR(st.st_mode)) {
            errors += run_file(argv[i]) != 0;
            runs++;
            continue;
        }
        struct dirent **names;
        int n = scandir(argv[i], &names, NULL, by_name);
        if (n < 0) {
            fprintf(stderr, "%s: %s: %s\n", prog, argv[i], strerror(errno));
            errors++;
            continue;
        }
        for (int j = 0; j < n; j++) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", argv[i], names[j]->d_name);
            if (names[j]->d_name[0] != '.' && !stat(path, &st) && S_ISREG(st.st_mode)) {
                errors += run_file(path) != 0;
                runs++;
            }
            free(names[j]);
        }
        free(names);
    }
    printf("%s: %d inputs replayed, %d unreadable\n", prog, runs, errors);
    return errors ? 1 : 0;
}
