/*
 * fixture.h: a small header in the shape of libvirt's public headers, for
 * the generator's snapshot tests (tests/test_gen.py).
 */
#ifndef FIXTURE_H
# define FIXTURE_H

# define VIR_FX_NAME_MAX 8
# define VIR_FX_LIST_MAX (VIR_FX_NAME_MAX * 2)
# define VIR_FX_UUID_BUFLEN (16)
# define VIR_FX_GREETING "hello, xdr"
# define VIR_FX_FLAG_MASK(n) (1 << (n))   /* function-like: not a constant */
# define VIR_FX_DEPRECATED __attribute__((deprecated))

typedef enum {
    VIR_FX_COLOR_RED = 0,
    VIR_FX_COLOR_GREEN,             /* auto-increment: 1 */
    VIR_FX_COLOR_BLUE = 5,
    VIR_FX_COLOR_CYAN,              /* 6 */
    VIR_FX_COLOR_ALL = VIR_FX_COLOR_RED | (1 << 4),

# ifdef VIR_ENUM_SENTINELS
    VIR_FX_COLOR_LAST               /* private: left out */
# endif
} virFxColor;

typedef enum {
    VIR_FX_NEG = -1,
    VIR_FX_HEX = 0x10,
    VIR_FX_SHIFTED = 1U << 31,
} virFxMisc;

#endif /* FIXTURE_H */
