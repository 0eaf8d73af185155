/*
 * `make install` into a temporary PREFIX (and through a DESTDIR): the installed liboutbox.pc names
 * the install location and nothing else, and a program built from its flags alone compiles and runs.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

/* How this suite was built (set by the Makefile): `make install` reuses that build directory, and
 * a program linking a sanitized liboutbox.so needs the same compiler and sanitizer runtime. */
#ifndef CHECK_INSTALL_BUILD
#define CHECK_INSTALL_BUILD "build"
#endif
#ifndef CHECK_INSTALL_CC
#define CHECK_INSTALL_CC "cc"
#endif
#ifndef CHECK_INSTALL_SANITIZE
#define CHECK_INSTALL_SANITIZE ""
#endif
#ifndef CHECK_INSTALL_SAN_FLAGS
#define CHECK_INSTALL_SAN_FLAGS ""
#endif

/* Only the public header and the library's own calls, as a user of the installed copy writes.
 * It names the file its liboutbox came from, so the test knows which copy ran. */
static const char outside_prog[] =
    "#define _GNU_SOURCE\n"
    "#include <dlfcn.h>\n"
    "#include <stdio.h>\n"
    "#include <outbox/outbox.h>\n"
    "int main(void) {\n"
    "    char err[256], schema[64];\n"
    "    size_t n = sizeof schema;\n"
    "    Dl_info info;\n"
    "    outbox_conf_t *conf = outbox_conf_new();\n"
    "    if (!conf) { fprintf(stderr, \"outbox_conf_new failed\\n\"); return 1; }\n"
    "    if (outbox_conf_set(conf, \"outbox.schema\", \"installed\", err, sizeof err) != OUTBOX_CONF_OK) {\n"
    "        fprintf(stderr, \"%s\\n\", err); return 1; }\n"
    "    if (outbox_conf_get(conf, \"outbox.schema\", schema, &n) != OUTBOX_CONF_OK) {\n"
    "        fprintf(stderr, \"outbox_conf_get failed\\n\"); return 1; }\n"
    "    if (!dladdr((void *)outbox_version_str, &info) || !info.dli_fname) {\n"
    "        fprintf(stderr, \"dladdr failed\\n\"); return 1; }\n"
    "    printf(\"liboutbox %s header %d.%d.%d schema %s\\n\", outbox_version_str(), OUTBOX_VERSION_MAJOR,\n"
    "           OUTBOX_VERSION_MINOR, OUTBOX_VERSION_PATCH, schema);\n"
    "    printf(\"from %s\\n\", info.dli_fname);\n"
    "    outbox_conf_destroy(conf);\n"
    "    return 0;\n"
    "}\n";

static char *tmp; /* this test's directory, removed when it passes (kept for a look when it fails) */

static void setup(void) {
    const char *base = getenv("TMPDIR");
    char tmpl[1024];
    snprintf(tmpl, sizeof(tmpl), "%s/liboutbox-install.XXXXXX", base && *base ? base : "/tmp");
    ck_assert_msg(mkdtemp(tmpl) != NULL, "mkdtemp %s failed", tmpl);
    tmp = strdup(tmpl);
}

static void teardown(void) {
    char *cmd;
    ck_assert(asprintf(&cmd, "rm -rf '%s'", tmp) > 0);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
    free(tmp);
}

/* A formatted string.  Caller frees. */
__attribute__((format(printf, 1, 2))) static char *str(const char *fmt, ...) {
    va_list ap;
    char *s;
    va_start(ap, fmt);
    ck_assert(vasprintf(&s, fmt, ap) > 0);
    va_end(ap);
    return s;
}

/* Runs a shell command line (printf-style) with stderr joined to stdout; *status is its exit code
 * (-1 if it did not exit).  The output is caller-owned, without its trailing newlines. */
__attribute__((format(printf, 2, 3))) static char *sh(int *status, const char *fmt, ...) {
    va_list ap;
    char *cmd, *full, *out = NULL;
    size_t len = 0;
    va_start(ap, fmt);
    ck_assert(vasprintf(&cmd, fmt, ap) > 0);
    va_end(ap);
    /* Never the make that may be running this suite: its jobserver and variables are not ours. */
    ck_assert(asprintf(&full, "unset MAKEFLAGS MFLAGS MAKELEVEL PKG_CONFIG_SYSROOT_DIR; (%s) 2>&1", cmd) > 0);
    FILE *p = popen(full, "r");
    ck_assert_msg(p != NULL, "popen: %s", cmd);
    FILE *o = open_memstream(&out, &len);
    ck_assert_ptr_nonnull(o);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), p)) > 0)
        fwrite(buf, 1, n, o);
    int rc = pclose(p);
    fclose(o);
    *status = rc != -1 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
    while (len > 0 && out[len - 1] == '\n')
        out[--len] = '\0';
    free(full);
    free(cmd);
    return out;
}

/* The last part of a long output, for failure messages. */
static const char *tail(const char *s) {
    size_t len = strlen(s);
    return len > 3000 ? s + len - 3000 : s;
}

/* `make <target>` from the source tree with this suite's build directory (nothing is rebuilt) and
 * the given install variables; fails the test if make does. */
static void make_target(const char *target, const char *vars) {
    const char *build = getenv("OUTBOX_BUILD_DIR");
    int st;
    char *out = sh(&st, "exec make --no-print-directory %s INSTALL_PREBUILT=1 BUILD='%s' SANITIZE='%s' CC='%s' %s", target,
                   build && *build ? build : CHECK_INSTALL_BUILD, CHECK_INSTALL_SANITIZE, CHECK_INSTALL_CC, vars);
    ck_assert_msg(st == 0, "make %s %s: exit %d\n%s", target, vars, st, tail(out));
    free(out);
}

/* pkg-config's answer for liboutbox with only pcdir added to its search path. */
static char *pkg_config(const char *pcdir, const char *args) {
    int st;
    char *out = sh(&st, "PKG_CONFIG_PATH='%s' exec pkg-config %s liboutbox", pcdir, args);
    ck_assert_msg(st == 0, "pkg-config %s liboutbox (PKG_CONFIG_PATH=%s): exit %d\n%s", args, pcdir, st, out);
    return out;
}

/* Asserts the installed .pc's text: its prefix, libdir and includedir lines, and no mention of
 * the staging directory (if any). */
static void check_pc_text(const char *pc, const char *prefix, const char *libdir_line, const char *incdir_line,
                          const char *destdir) {
    int st;
    char *text = sh(&st, "cat '%s'", pc);
    ck_assert_msg(st == 0, "no liboutbox.pc at %s: %s", pc, text);
    char *want = str("prefix=%s\n%s\n%s\n", prefix, libdir_line, incdir_line);
    ck_assert_msg(!strncmp(text, want, strlen(want)), "%s begins\n%s\nexpected\n%s", pc, text, want);
    ck_assert_msg(!strstr(text, "/usr/local"), "%s still mentions /usr/local:\n%s", pc, text);
    if (destdir)
        ck_assert_msg(!strstr(text, destdir), "%s mentions DESTDIR %s:\n%s", pc, destdir, text);
    free(want);
    free(text);
}

/* Builds outside_prog in dir with the compiler flags pkg-config gives for the .pc in pcdir (plus
 * extra), runs it with env before it, and checks that it printed the version and ran on the
 * liboutbox.so.0 in libdir. */
static void build_and_run(const char *dir, const char *pcdir, const char *libdir, const char *extra,
                          const char *env) {
    char *src = str("%s/outside.c", dir), *bin = str("%s/outside", dir);
    FILE *f = fopen(src, "w");
    ck_assert_ptr_nonnull(f);
    fputs(outside_prog, f);
    ck_assert_int_eq(fclose(f), 0);

    int st;
    char *out = sh(&st, "exec %s %s -Wall -Wextra -Werror -o '%s' '%s' $(PKG_CONFIG_PATH='%s' pkg-config --cflags "
                   "--libs liboutbox) %s",
                   CHECK_INSTALL_CC, CHECK_INSTALL_SAN_FLAGS, bin, src, pcdir, extra);
    ck_assert_msg(st == 0, "compiling against the installed liboutbox (PKG_CONFIG_PATH=%s): exit %d\n%s", pcdir,
                  st, tail(out));
    free(out);

    out = sh(&st, "%s exec '%s'", env, bin);
    ck_assert_msg(st == 0, "the outside program (%s): exit %d\n%s", env, st, tail(out));
    char *want = str("liboutbox %s header %s schema installed\nfrom %s/liboutbox.so.0",
                     outbox_version_str(), outbox_version_str(), libdir);
    ck_assert_msg(!strcmp(out, want), "the outside program printed\n%s\nexpected\n%s", out, want);
    free(want);
    free(out);
    free(bin);
    free(src);
}

/* Asserts that nothing but directories is left under dir. */
static void check_empty(const char *dir) {
    int st;
    char *out = sh(&st, "find '%s' ! -type d", dir);
    ck_assert_msg(st == 0 && !*out, "make uninstall left in %s:\n%s", dir, out);
    free(out);
}

START_TEST(test_install_prefix_is_in_the_pc_and_an_outside_program_builds) {
    ck_assert_msg(access("Makefile", R_OK) == 0 && access("include/outbox/outbox.h", R_OK) == 0,
                  "run this suite from the repository root (no Makefile here)");
    char *prefix = str("%s/x", tmp), *vars = str("PREFIX='%s'", prefix);
    make_target("install", vars);

    char *pcdir = str("%s/lib/pkgconfig", prefix), *libdir = str("%s/lib", prefix);
    char *pc = str("%s/liboutbox.pc", pcdir);
    check_pc_text(pc, prefix, "libdir=${prefix}/lib", "includedir=${prefix}/include", NULL);
    char *got = pkg_config(pcdir, "--variable=libdir");
    ck_assert_msg(!strcmp(got, libdir), "pkg-config --variable=libdir: %s, expected %s", got, libdir);
    free(got);
    got = pkg_config(pcdir, "--cflags");
    char *want = str("-I%s/include", prefix);
    ck_assert_msg(strstr(got, want) != NULL, "pkg-config --cflags: %s, expected %s in it", got, want);
    free(got);
    free(want);

    /* The unit runs the relay installed beside it. */
    int st;
    char *unit = sh(&st, "grep '^ExecStart=' '%s/lib/systemd/system/outbox-relay.service'", prefix);
    want = str("ExecStart=%s/bin/outbox-relay ", prefix);
    ck_assert_msg(st == 0 && !strncmp(unit, want, strlen(want)), "the unit's %s, expected %s...", unit, want);
    free(unit);
    free(want);

    /* A non-standard libdir needs an rpath (or LD_LIBRARY_PATH) at run time; pkg-config names it. */
    got = pkg_config(pcdir, "--variable=libdir");
    char *rpath = str("-Wl,-rpath,'%s'", got);
    free(got);
    build_and_run(tmp, pcdir, libdir, rpath, "unset LD_LIBRARY_PATH;");
    free(rpath);

    make_target("uninstall", vars);
    check_empty(prefix);
    free(pc);
    free(pcdir);
    free(libdir);
    free(vars);
    free(prefix);
}
END_TEST

START_TEST(test_destdir_never_reaches_the_pc) {
    ck_assert_msg(access("Makefile", R_OK) == 0 && access("include/outbox/outbox.h", R_OK) == 0,
                  "run this suite from the repository root (no Makefile here)");
    /* A package build: staged under DESTDIR, then moved to PREFIX as a package manager would, the
     * staging tree gone.  LIBDIR and INCDIR are overridden as distributions do (lib64 and the like). */
    char *prefix = str("%s/final", tmp), *stage = str("%s/stage", tmp);
    char *dirs = str("PREFIX='%s' LIBDIR='%s/lib64' INCDIR='%s/inc'", prefix, prefix, prefix);
    char *vars = str("DESTDIR='%s' %s", stage, dirs);
    make_target("install", vars);

    char *pc = str("%s%s/lib64/pkgconfig/liboutbox.pc", stage, prefix);
    check_pc_text(pc, prefix, "libdir=${prefix}/lib64", "includedir=${prefix}/inc", stage);
    int st;
    char *out = sh(&st, "grep -rlF '%s' '%s'", stage, stage);
    ck_assert_msg(st == 1, "installed files mention DESTDIR %s (grep exit %d):\n%s", stage, st, out);
    free(out);

    out = sh(&st, "mv '%s%s' '%s' && rm -rf '%s'", stage, prefix, prefix, stage);
    ck_assert_msg(st == 0, "moving the staged tree into place: %s", out);
    free(out);

    char *pcdir = str("%s/lib64/pkgconfig", prefix), *libdir = str("%s/lib64", prefix);
    char *got = pkg_config(pcdir, "--variable=libdir");
    ck_assert_msg(!strcmp(got, libdir), "pkg-config --variable=libdir: %s, expected %s", got, libdir);
    free(got);
    char *env = str("LD_LIBRARY_PATH='%s'", libdir);
    build_and_run(tmp, pcdir, libdir, "", env);

    /* The same directories, without DESTDIR, remove it all from where it now lives. */
    make_target("uninstall", dirs);
    check_empty(prefix);
    free(env);
    free(libdir);
    free(pcdir);
    free(pc);
    free(vars);
    free(dirs);
    free(stage);
    free(prefix);
}
END_TEST

static Suite *install_suite(void) {
    Suite *s = suite_create("install");
    TCase *tc = tcase_create("pkg-config");
    tcase_add_checked_fixture(tc, setup, teardown);
    /* make install copies files (nothing is rebuilt); a compile and a run follow. */
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_install_prefix_is_in_the_pc_and_an_outside_program_builds);
    tcase_add_test(tc, test_destdir_never_reaches_the_pc);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) {
    return tu_run(install_suite());
}
