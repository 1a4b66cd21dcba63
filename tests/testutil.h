/* testutil: helpers shared by the libcheck test files (linked into every test binary). */
#ifndef LORAD_TESTUTIL_H
#define LORAD_TESTUTIL_H

/* A new directory /tmp/<prefix>_XXXXXX; malloc'd path, freed by testutil_rmdir.
 * Fails the current test (ck_assert) when it cannot be made. */
char *testutil_mkdtemp(const char *prefix);

/* Removes the files in dir, then dir itself, and frees the path; accepts NULL. Only one
 * level: test directories hold plain files. */
void testutil_rmdir(char *dir);

#endif
