import glob
import os
class Hyperparameters:
    data_path = os.environ.get("DATA_PATH", "./data/datasets/fineweb10B_sp1024")
    train_files = os.path.join(data_path, "fineweb_train_*.bin")
    val_files = os.path.join(data_path, "fineweb_val_*.bin")
def main():
    args = Hyperparameters()
    extra = sorted(glob.glob(args.val_files))
    files = sorted(glob.glob(args.train_files))
    files += extra[:2]
    train_loader = DistributedTokenLoader(files, 0, 1)
