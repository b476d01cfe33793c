/* ProcessPrng, which Rust's standard library imports from bcryptprimitives.dll on Windows
 * (10 and later have it), for Wine 8.0 (Debian 12), which has no such DLL: the Windows build
 * cannot start there without it. Built with MinGW-w64 into the test's Wine prefix only; it
 * never ships. BCryptGenRandom is Wine's own. */
#include <windows.h>
#include <bcrypt.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    return BCryptGenRandom(NULL, data, (ULONG)len, BCRYPT_USE_SYSTEM_PREFERRED_RNG) == 0;
}
