/* LD_PRELOAD'ed into nginx by ci/bench (W5): at start, allocates and touches BENCH_INFLATE_MB MiB,
 * so that nginx's master, and every worker it forks, has that much resident memory mapped. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

__attribute__((constructor)) static void inflate(void)
{
    const char *mb = getenv("BENCH_INFLATE_MB");
    if (mb == NULL)
        return;
    size_t size = (size_t)strtoul(mb, NULL, 10) << 20;
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED)
        memset(p, 1, size);
}
