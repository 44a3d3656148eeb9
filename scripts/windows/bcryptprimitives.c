/*
 * Stand-in for bcryptprimitives.dll, which Wine 8.0 lacks. Rust's std (>= 1.78) imports
 * ProcessPrng from it for HashMap keys and `rand`'s OS RNG; here it is forwarded to
 * advapi32's RtlGenRandom (SystemFunction036), which Wine implements.
 *
 * For running under Wine only: never ship this next to the agent on real Windows (it
 * would shadow the system DLL; Windows 10+ has the real one).
 */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length);

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}

BOOL WINAPI DllMain(HINSTANCE instance, DWORD reason, LPVOID reserved)
{
    (void)instance;
    (void)reason;
    (void)reserved;
    return TRUE;
}
