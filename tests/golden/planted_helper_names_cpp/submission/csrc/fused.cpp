// fused kernel
int fused(int x) { return x + 1; }
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
// padding so the kernel weighs something
